"""`python -m brainseg.data {prepare,info,verify} [hydra overrides]`.

python -m brainseg.data prepare                       # download and convert the figshare set
python -m brainseg.data info data=folder data.root=../shared/datasets/figshare-brain-tumor-png256
python -m brainseg.data verify data=folder data.root=<folder>
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from brainseg.config import compose
from brainseg.data.sources import LABEL_NAMES, ContentCheck, Source
from brainseg.data.splits import SUBSETS, resolve_mode


def load_config(overrides: list[str]) -> DictConfig:
    """Compose the training configuration with `overrides`, as a training run would."""
    cfg = compose(overrides)
    if OmegaConf.is_missing(cfg.data, "root"):
        raise SystemExit(
            "data.root is not set: pass data.root=<folder holding images/ and masks/>, e.g. "
            "data=folder data.root=../shared/datasets/figshare-brain-tumor-png256"
        )
    return cfg


def prepare(cfg: DictConfig) -> int:
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    from brainseg.data.cache import cache_path

    print(
        f"cache ready: {cache_path(datamodule.source, datamodule.image_size, datamodule.cache_dir)}"
    )
    return 0


def info(cfg: DictConfig) -> int:
    from scipy import ndimage

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    data = datamodule.data
    known = data.pids[data.pids != ""]
    print(f"slices:    {len(data)} at {datamodule.image_size}x{datamodule.image_size}")
    print(
        f"patients:  {len(np.unique(known)) if len(known) else 'unknown'}"
        + (f" ({len(data) - len(known)} slices without pid)" if 0 < len(known) < len(data) else "")
    )
    labels, counts = np.unique(data.labels, return_counts=True)
    print(
        "tumor types: "
        + ", ".join(
            f"{LABEL_NAMES.get(int(k), k)} {c}" for k, c in zip(labels, counts, strict=True)
        )
    )
    area = data.masks.reshape(len(data), -1).mean(axis=1) * 100
    eight_connected = np.ones((3, 3), dtype=bool)  # as the lesion metrics count them
    lesions = np.array([ndimage.label(m, structure=eight_connected)[1] for m in data.masks])
    print(
        f"mask area (% of slice): min {area.min():.2f}, median {np.median(area):.2f}, "
        f"mean {area.mean():.2f}, max {area.max():.2f}; empty masks {int((area == 0).sum())}"
    )
    n_les, c_les = np.unique(np.minimum(lesions, 3), return_counts=True)
    print(
        "lesions per slice: "
        + ", ".join(f"{'3+' if k == 3 else k}: {c}" for k, c in zip(n_les, c_les, strict=True))
    )
    table = datamodule.split_table()
    fold = f", test = fold {datamodule.fold}" if datamodule.fold is not None else ""
    print(f"split ({datamodule.split_mode}, split_seed {datamodule.split_seed}{fold}):")
    for name in SUBSETS:
        group = table[table["subset"] == name]
        pids = group["pid"][group["pid"] != ""].nunique()
        print(f"  {name:5s} {len(group):5d} slices, {pids} patients")
    return 0


def verify(cfg: DictConfig) -> int:
    source = instantiate(cfg.data.source)
    print(f"checking {type(source).__name__} at {cfg.data.get('root')}")
    content = ContentCheck()
    problems = source.verify(content)
    try:
        split, problem = split_summary(source, cfg.data.split)
    except ValueError as error:
        # The pids are unreadable, for a reason that verify has listed (else list it here).
        split = "split: unknown until the problems above are fixed"
        problem = None if problems else str(error)
    problems += [problem] if problem else []
    for line in problems:
        print(f"PROBLEM {line}")
    warnings = content.warnings()
    for line in warnings:
        print(f"WARNING {line}")
    print(split)
    if problems:
        print(f"{len(problems)} problem(s) found")
        return 1
    checked = "all readable, sizes match, masks binary"
    if warnings:
        checked += f"; {len(warnings)} warning(s) above: look at those slices before training"
    print(f"OK: {len(source)} image/mask pairs, {checked}")
    return 0


def split_summary(source: Source, requested: str) -> tuple[str, str | None]:
    """A line on the split that `requested` gives on `source`, and the problem that stops it."""
    pids = source.patient_ids()
    try:
        mode = resolve_mode(requested, list(pids), list(pids.values()), source.pid_file)
    except ValueError as error:
        return f"split: data.split={requested} cannot split this data", str(error)
    if mode == "patient":
        detail = f"{len(set(pids.values()))} patients"
    elif requested == "auto":
        detail = "no slice has a patient id: slices of one patient may land in different subsets"
    else:
        detail = "per slice, as asked"
    return f"split: data.split={requested} splits by {mode} ({detail})", None


COMMANDS = {"prepare": prepare, "info": info, "verify": verify}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m brainseg.data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. data=folder data.root=DIR"
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.overrides)
    try:
        return COMMANDS[args.command](cfg)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
