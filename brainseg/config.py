"""The configuration tree of every entry point, and the one way to compose it outside a CLI."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Shipped inside the package (brainseg/conf, also reachable as conf/ at the repository's top).
CONF_DIR = Path(__file__).resolve().parent / "conf"


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
    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError(
            "trainer=gpu_per_job needs CUDA GPUs and none is visible; use trainer=cpu"
        )
    return [int(job_num) % count]


def uses_cuda(accelerator: str) -> bool:
    """Whether `trainer.accelerator` puts the run on a CUDA GPU here (`auto`: when one is)."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX): there bf16 autocast
    trains both networks faster than float32 (docs/benchmarks.md); elsewhere it is emulated."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(requested: str | int | None, accelerator: str) -> str:
    """`auto` becomes bf16-mixed on CUDA GPUs that support it, 16-mixed on older ones;
    on the CPU bf16-mixed where it has native bf16 instructions, else 32-true."""
    if requested not in (None, "auto"):
        return str(requested)
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    on_cpu = accelerator in ("auto", "cpu")
    return "bf16-mixed" if on_cpu and cpu_has_bf16() else "32-true"


def resolve_channels_last(requested: bool | str | None, accelerator: str) -> bool:
    """`auto` turns NHWC on where it pays: convolutions on CUDA tensor cores."""
    if requested in (None, "auto"):
        return uses_cuda(accelerator)
    return bool(requested)


# What `auto` means is decided when the configuration is resolved, on the machine that runs it.
OmegaConf.register_new_resolver("gpu_of_job", gpu_of_job, replace=True)
OmegaConf.register_new_resolver("brainseg.precision", resolve_precision, replace=True)

# The job folder resolvers (hydra.sweep.subdir, hydra.output_subdir) live with the run directory.
import brainseg.rundir  # noqa: E402, F401
