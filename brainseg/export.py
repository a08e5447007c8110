"""A trained network as ONNX or TorchScript, checked against PyTorch on brain-like slices.

    python -m brainseg.export ckpt_path=<run_dir>/checkpoints/best.ckpt format=onnx
    python -m brainseg.export ckpt_path=... format=torchscript output=unet.pt

The exported model maps normalised images `image` (B, C, H, W) to `logits` (B, 1, H, W), any
batch size. Inputs are prepared as `brainseg.data.transforms.SlicePreprocessor` does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import numpy as np
from omegaconf import DictConfig

from brainseg.atomic import atomic_path

# torch and Lightning are imported where they are used: --help, tab completion and a
# mistyped override answer before either loads.
if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
# Batch sizes of the check; neither is the traced one, so a fixed batch would be caught.
CHECK_BATCHES = (1, 3)


def export(
    ckpt_path: str | os.PathLike,
    format: str = "onnx",
    output: str | os.PathLike | None = None,
    image_size: int | None = None,
    opset: int = 18,
    tolerance: float = 1e-3,
    seed: int = 0,
    trust_checkpoint: bool = False,
) -> tuple[Path, float]:
    """Writes the checkpoint's network in `format` and compares it with PyTorch (in float32).

    `trust_checkpoint`: load a checkpoint that needs more than brainseg's checkpoint types
    (`brainseg.checkpoints`); it may run code.

    Returns:
        (path written, max |exported - PyTorch| over the logits of `check_slices`).

    Raises:
        RuntimeError: when that difference exceeds `tolerance`.
    """
    import torch

    from brainseg.module import load_module

    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {', '.join(FORMATS)}")
    module = load_module(ckpt_path, trust=trust_checkpoint)
    net, data = module.net.eval(), module.hparams.config["data"]
    size = int(image_size or data["image_size"])
    path = Path(output) if output else _default_path(Path(ckpt_path), format)
    path.parent.mkdir(parents=True, exist_ok=True)
    slices = check_slices(module.hparams.config, size, 2 + sum(CHECK_BATCHES), seed)
    example, rest = slices[:2], slices[2:]
    checks = list(rest.split(list(CHECK_BATCHES)))
    if format == "onnx":
        _to_onnx(net, example, path, opset)
        diff = _max_diff(net, checks, _onnx_runner(path))
    else:
        _to_torchscript(net, example, path)
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
        diff = _max_diff(net, checks, lambda x: loaded(x).numpy())
    if not diff <= tolerance:
        raise RuntimeError(
            f"the {format} export {path} differs from PyTorch by {diff:.3g} (> tolerance "
            f"{tolerance:g}): check the opset (export.opset={opset}) or raise export.tolerance"
        )
    return path, diff


def check_slices(config: dict, size: int, count: int, seed: int = 0) -> torch.Tensor:
    """`count` synthetic brain slices with tumors (brainseg.data.synthetic), prepared as
    `brainseg.predict` prepares a slice for the run's network: (count, C, size, size).

    Inputs like the real ones drive the network through the range of activations it meets in
    use; on random noise an export can agree within 1e-3 and differ by 5e-3 on real slices."""
    import torch

    from brainseg.data.synthetic import SyntheticSource
    from brainseg.data.transforms import SlicePreprocessor

    prepare = SlicePreprocessor.from_config({**config["data"], "image_size": size})
    source = SyntheticSource(num_slices=count, num_patients=count, size=size, seed=seed)
    return torch.stack([prepare(source.sample(i).image) for i in range(count)])


def _default_path(ckpt_path: Path, format: str) -> Path:
    return ckpt_path.with_name(ckpt_path.stem + FORMATS[format])


# The ONNX exporter's optimiser reports every pass at INFO ("Removed 191 unused nodes", ...).
ONNX_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Only warnings and errors of these loggers while the block runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _to_onnx(net: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), _quiet_loggers(*ONNX_LOGGERS):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)


def _onnx_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _to_torchscript(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; it still runs anywhere
        traced = torch.jit.trace(net, example, check_trace=False)  # checked below, once
    with atomic_path(path) as tmp:
        traced.save(str(tmp))


def _max_diff(net: nn.Module, inputs: list[torch.Tensor], run) -> float:
    import torch

    with torch.no_grad():
        return max(float(np.abs(run(x) - net(x).numpy()).max()) for x in inputs)


# conf/ beside this module: the package's own configs, in a checkout or an installed wheel.
@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> float:
    e = cfg.export
    path, diff = export(
        cfg.ckpt_path,
        cfg.format,
        cfg.output,
        image_size=e.image_size,
        opset=e.opset,
        tolerance=e.tolerance,
        seed=e.seed,
        trust_checkpoint=cfg.trust_checkpoint,
    )
    print(
        f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); "
        f"max |{cfg.format} - PyTorch| on synthetic brain slices: {diff:.3g} "
        f"(tolerance {e.tolerance:g})"
    )
    return diff


if __name__ == "__main__":
    main()
