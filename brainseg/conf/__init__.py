"""brainseg's Hydra configuration tree: a package, so that Hydra finds it in an installed wheel."""
