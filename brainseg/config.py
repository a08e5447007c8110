"""The configuration tree of every entry point, and the one way to compose it outside a CLI."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Shipped inside the package (brainseg/conf, also reachable as conf/ at the repository's top).
CONF_DIR = Path(__file__).resolve().parent / "conf"

log = logging.getLogger(__name__)


def compose(
    overrides: list[str] | None = None,
    config_name: str = "train",
    return_hydra_config: bool = False,
) -> DictConfig:
    """The configuration `brainseg-train <overrides>` (or another entry point's
    `config_name`) composes: for tests, benchmarks and the non-Hydra command lines."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(
            config_name=config_name,
            overrides=list(overrides or []),
            return_hydra_config=return_hydra_config,
        )


# Whole-number settings: key -> (smallest value, whether null is allowed).
_INTEGER_SETTINGS = {
    "seed": (None, False),
    "data.split_seed": (None, False),
    "data.image_size": (1, False),
    "data.batch_size": (1, False),
    "data.eval_batch_size": (1, True),  # null: the training batch size
    "data.num_workers": (0, False),
    "data.fold": (None, True),  # its range: the data module's check
    "trainer.max_epochs": (-1, False),  # -1: Lightning's "no limit"
}
_BOOLEAN_SETTINGS = ("fit", "test", "pretrained")


def declared_keys() -> set[str]:
    """The top-level settings of brainseg.train: the keys `train.yaml` declares and its config
    groups (whose `@package _global_` files may only fill keys declared there)."""
    primary = OmegaConf.load(CONF_DIR / "train.yaml")
    keys = {str(key) for key in primary if key != "defaults"}
    for entry in primary.get("defaults") or []:
        if isinstance(entry, DictConfig):
            keys.update(str(group).split()[-1] for group in entry)  # "optional debug" -> debug
    return keys | {"hydra"}


def check_settings(cfg: DictConfig) -> None:
    """Refuses, naming the key and the fix, settings that do not fit their type (`seed=1.5`,
    `seed=abc`, `data.eval_batch_size=0`, `fit=maybe`) and top-level keys that nothing reads
    (`+foo=1`): cheap checks, made before any data is cached."""
    unknown = sorted(set(cfg) - declared_keys())
    if unknown:
        raise ValueError(
            f"{', '.join(f'{key}={cfg.get(key)!r}' for key in unknown)}: no such setting, nothing "
            "would read it; check the spelling and where it belongs (e.g. +trainer.<arg>=... for "
            "a Lightning Trainer argument). A new top-level setting is declared in "
            "brainseg/conf/train.yaml"
        )
    for key, (minimum, nullable) in _INTEGER_SETTINGS.items():
        value = _select(cfg, key)
        if value is _ABSENT or (value is None and nullable):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"{key}={value!r} must be a whole number{'' if not nullable else ' or null'}, "
                f"e.g. {key}={max(minimum or 0, 1)}"
            )
        if minimum is not None and value < minimum:
            at_least = "a positive number" if minimum == 1 else f"{minimum} or more"
            raise ValueError(f"{key}={value} must be {at_least}")
    for key in _BOOLEAN_SETTINGS:
        value = _select(cfg, key)
        if value is not _ABSENT and not isinstance(value, bool):
            raise ValueError(f"{key}={value!r} must be true or false")


_ABSENT = object()


def _select(cfg: DictConfig, key: str):
    """The resolved value of `key`, or _ABSENT when it is not set (or cannot be resolved here:
    resolving errors name their own key)."""
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except OmegaConfBaseException:
        return _ABSENT


def gpu_of_job(job_num: int) -> list[int]:
    """The GPU of the sweep's job `job_num` when jobs run side by side (trainer=gpu_per_job)."""
    import torch  # here, not at the top: --help and config errors answer without torch

    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError(
            "trainer=gpu_per_job needs CUDA GPUs and none is visible; use trainer=cpu"
        )
    return [int(job_num) % count]


def uses_cuda(accelerator: str) -> bool:
    """Whether `trainer.accelerator` puts the run on a CUDA GPU here (`auto`: when one is)."""
    import torch

    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX): there bf16 autocast
    trains both networks faster than float32 (docs/benchmarks.md); elsewhere it is emulated."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(requested: str | int | None, accelerator: str) -> str:
    """`auto` becomes bf16-mixed on CUDA GPUs that support it, 16-mixed on older ones;
    on the CPU bf16-mixed where it has native bf16 instructions, else 32-true."""
    if requested not in (None, "auto"):
        return str(requested)
    if uses_cuda(accelerator):
        import torch

        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    on_cpu = accelerator in ("auto", "cpu")
    return "bf16-mixed" if on_cpu and cpu_has_bf16() else "32-true"


def resolve_channels_last(requested: bool | str | None, accelerator: str) -> bool:
    """`auto` turns NHWC on where it pays: convolutions on CUDA tensor cores."""
    if requested in (None, "auto"):
        return uses_cuda(accelerator)
    return bool(requested)


def data_home() -> str:
    """Where downloads and caches live, whatever directory a command runs in:
    `BRAINSEG_DATA_DIR`, else `$XDG_CACHE_HOME/brainseg`, else `~/.cache/brainseg` (as torch hub
    and Hugging Face keep theirs). Always absolute."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "brainseg"
    return _absolute(os.environ.get("BRAINSEG_DATA_DIR") or default)


def output_home() -> str:
    """Where runs (`outputs/`) and sweeps (`multirun/`) go by default: `BRAINSEG_OUTPUT_DIR`,
    else `~/brainseg`. Always absolute."""
    return _absolute(os.environ.get("BRAINSEG_OUTPUT_DIR") or Path.home() / "brainseg")


def _absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


# Keys holding paths: a run stores them absolute, so that its checkpoint and records still
# find the data when read from another directory (the report's qualitative grids).
PATH_KEYS = ("paths.data_dir", "paths.cache_dir", "data.root", "data.cache_dir")


def prepare_run_config(cfg: DictConfig) -> None:
    """Settles, in place, what a run's config leaves to the machine: relative paths become
    absolute (`PATH_KEYS`), and `offline=true` turns off every download (figshare, ImageNet
    weights unless `weights_dir` holds them) and puts W&B offline. A `weights_dir` holding
    `<backbone>.pth` gives the networks with a backbone their ImageNet weights without a
    download, online or not."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, str) and value and not os.path.isabs(value):
            OmegaConf.update(cfg, key, _absolute(value), merge=False)
    offline = bool(cfg.get("offline", False))
    source = OmegaConf.select(cfg, "data.source", default=None)
    if offline and source is not None and "download" in source:
        source.download = False
    wandb = OmegaConf.select(cfg, "logger.wandb", default=None)
    if offline and wandb is not None:
        wandb.offline = True
    _local_weights(cfg, offline)


def _local_weights(cfg: DictConfig, offline: bool) -> None:
    model = cfg.get("model")
    if model is None or "weights_path" not in model or model.get("weights_path"):
        return
    if not model.get("pretrained") or not model.get("backbone"):
        return
    weights_dir = cfg.get("weights_dir")
    found = Path(weights_dir, f"{model.backbone}.pth") if weights_dir else None
    if found is not None and found.is_file():
        model.weights_path = str(found.resolve())
    elif offline:
        looked = f"no {found}" if found else "no weights_dir set"
        log.warning(
            "offline: %s, so %s trains from scratch (pretrained=false); put torchvision's "
            "ImageNet state dict there as %s.pth (weights_dir=DIR) to start from it",
            looked,
            model.get("name", "the network"),
            model.backbone,
        )
        model.pretrained = False


# What `auto` means is decided when the configuration is resolved, on the machine that runs it.
OmegaConf.register_new_resolver("gpu_of_job", gpu_of_job, replace=True)
OmegaConf.register_new_resolver("brainseg.precision", resolve_precision, replace=True)
OmegaConf.register_new_resolver("brainseg.data_home", data_home, replace=True)
OmegaConf.register_new_resolver("brainseg.output_home", output_home, replace=True)

# The job folder resolvers (hydra.sweep.subdir, hydra.output_subdir) live with the run directory.
import brainseg.rundir  # noqa: E402, F401
