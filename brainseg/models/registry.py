"""Every network by name: the `model` config group is the registry, this module builds from it.

A network is a `conf/model/<name>.yaml` (or one in a directory on Hydra's search path) whose
`_target_` is a `SegmentationNetwork`. Its keys are the constructor's arguments, plus three
the framework reads and the constructor never sees (`FRAMEWORK_KEYS`):

- `name`: the label of its runs in metrics.json, the report and W&B (the file's stem);
- `pretrained`: load the family's published weights when a new run starts;
- `weights_path`: load them from this local file instead (offline).

The sizes a preset gives it come from `networks.<name>.<key>` when the preset has that entry
(`${oc.select:networks.<name>.<key>,<default>}` in the yaml), else from the yaml's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from brainseg.config import CONF_DIR, compose
from brainseg.models.base import SegmentationNetwork

FRAMEWORK_KEYS = ("name", "pretrained", "weights_path")
PRESETS = ("study", "cpu", "smoke")


def build_network(
    model_cfg: DictConfig | Mapping[str, Any], load_pretrained: bool = True
) -> SegmentationNetwork:
    """The network of a `model` config, its weights loaded as the config says.

    Construction never fetches weights; then, with `load_pretrained` (a new run), a
    `weights_path` is loaded, or with `pretrained` the family's published weights (a family
    without any stays randomly initialised). With `load_pretrained=False` (rebuilding a
    checkpoint, whose state dict the caller loads) nothing is fetched or read.

    Raises:
        TypeError: when `_target_` builds something other than a `SegmentationNetwork`.
    """
    cfg = OmegaConf.to_container(OmegaConf.create(model_cfg), resolve=True)
    name = cfg.pop("name", None) or cfg.get("_target_", "?")
    pretrained = bool(cfg.pop("pretrained", False))
    weights_path = cfg.pop("weights_path", None)
    net = instantiate(cfg, _convert_="all")
    if not isinstance(net, SegmentationNetwork):
        raise TypeError(
            f"model {name}: {cfg.get('_target_')} built a {type(net).__name__}, not a "
            "brainseg.models.SegmentationNetwork; subclass it (docs/training.md, 'Adding a "
            "network')"
        )
    if load_pretrained and weights_path is not None:
        net.load_pretrained(weights_path)
    elif load_pretrained and pretrained and net.pretrained_weights is not None:
        net.load_pretrained()
    return net


def list_networks(config_dirs: Sequence[str | Path] = ()) -> list[str]:
    """The names `model=<name>` accepts: brainseg's `conf/model/*.yaml` and those of
    `config_dirs` (directories added to Hydra's search path, with a `model/` group)."""
    dirs = [CONF_DIR, *map(Path, config_dirs)]
    return sorted({p.stem for d in dirs for p in (d / "model").glob("*.yaml")})


def network_config(
    name: str,
    preset: str = "study",
    overrides: Sequence[str] = (),
    config_dirs: Sequence[str | Path] = (),
) -> tuple[DictConfig, int]:
    """The resolved `model` config of network `name` as `brainseg-train experiment=<preset>
    model=<name> pretrained=false <overrides>` composes it, and the image size it runs at."""
    search = [f"file://{Path(d).resolve()}" for d in config_dirs]
    args = [f"experiment={preset}", f"model={name}", "pretrained=false", *overrides]
    if search:
        args.append(f"hydra.searchpath=[{','.join(search)}]")
    cfg = compose(args)
    model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    return model, int(cfg.data.image_size)


def get_network(
    name: str,
    preset: str = "study",
    overrides: Sequence[str] = (),
    config_dirs: Sequence[str | Path] = (),
) -> SegmentationNetwork:
    """Network `name` at preset `preset`'s size, randomly initialised (nothing downloaded)."""
    model, _ = network_config(name, preset, overrides, config_dirs)
    return build_network(model, load_pretrained=False)
