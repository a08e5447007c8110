"""From a trained network to masks, one way for predict, the report's grids and the W&B media.

- Input: `brainseg.data.transforms.SlicePreprocessor`, the test stage's own preparation.
- Precision: the one the checkpoint's run was tested in (its resolved `trainer.precision`, also
  `trainer_precision` in metrics.json) unless overridden; run as Lightning runs the test stage
  (autocast for `*-mixed`, weights and inputs cast for `*-true`), with the run's float32 matmul
  precision (`runtime.matmul_precision`).
- Decision: the metrics' rule on the logits, `logits_to_masks` with the checkpoint's
  `metrics.threshold` unless overridden, so the masks are those the test stage scored.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainseg.data.transforms import SlicePreprocessor
from brainseg.metrics import logits_to_masks, probabilities
from brainseg.metrics.scores import check_threshold

log = logging.getLogger(__name__)

# Lightning's precision settings that inference reproduces: base dtype, and "mixed" (autocast)
# or "true" (weights and inputs in that dtype). "32" and "bf16" are Lightning's short forms.
_DTYPES = {"64": torch.float64, "32": torch.float32, "bf16": torch.bfloat16, "16": torch.float16}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


def parse_precision(precision: str) -> tuple[torch.dtype, bool]:
    """(dtype, autocast?) of a Lightning precision setting; a ValueError naming the choices."""
    base, _, mode = str(precision).partition("-")
    mode = mode or "true"
    if (
        base not in _DTYPES
        or mode not in ("true", "mixed")
        or (mode == "mixed" and base not in ("bf16", "16"))
    ):
        raise ValueError(
            f"precision={precision!r} is not one brainseg runs inference in: use one of "
            f"{', '.join(PRECISIONS)}, or null for the precision the checkpoint was tested in"
        )
    return _DTYPES[base], mode == "mixed"


def tested_precision(config: dict[str, Any]) -> str:
    """The precision a run's test stage ran in: its `trainer.precision`, resolved when it ran."""
    precision = (config.get("trainer") or {}).get("precision")
    if precision is None:
        raise KeyError("the checkpoint's configuration has no trainer.precision")
    return str(precision)


@contextlib.contextmanager
def precision_context(
    precision: str, device: torch.device, matmul_precision: str | None = None
) -> Iterator[None]:
    """Autocast as Lightning's test stage has it for `*-mixed` (nothing else for `*-true`),
    and `torch.set_float32_matmul_precision(matmul_precision)`, restored on exit."""
    dtype, mixed = parse_precision(precision)
    before = torch.get_float32_matmul_precision()
    if matmul_precision is not None:
        torch.set_float32_matmul_precision(matmul_precision)
    autocast = torch.autocast(device.type, dtype=dtype) if mixed else contextlib.nullcontext()
    try:
        with autocast:
            yield
    finally:
        torch.set_float32_matmul_precision(before)


def predict_logits(
    module: Callable[[Tensor], Tensor],
    images: Tensor,
    precision: str = "32-true",
    tta: bool = False,
    matmul_precision: str | None = None,
) -> Tensor:
    """Logits (B, 1, H, W) of normalised images (B, C, H, W) at `precision`.

    Without `tta` they are the network's own, in the dtype it produced (bf16 under bf16
    autocast), so that `logits_to_masks` decides exactly as the test stage's metrics did. With
    `tta`, the logit (float32) of the probability averaged with the horizontally flipped pass.
    For `*-true` precisions the caller casts the network (`cast_for_precision`).
    """
    dtype, mixed = parse_precision(precision)
    if not mixed:
        images = images.to(dtype)
    with torch.inference_mode(), precision_context(precision, images.device, matmul_precision):
        logits = module(images)
        flipped = module(images.flip(-1)).flip(-1) if tta else None
    if flipped is None:
        return logits
    probs = (probabilities(logits).double() + probabilities(flipped).double()) / 2
    return torch.logit(probs, eps=1e-12).float()


def cast_for_precision(net: nn.Module, precision: str) -> nn.Module:
    """`net` with its weights in the dtype a `*-true` precision computes in (as Lightning casts
    them), unchanged for `*-mixed`."""
    dtype, mixed = parse_precision(precision)
    return net if mixed else net.to(dtype)


def masks_at(logits: Tensor, shape: tuple[int, int], threshold: float) -> Tensor:
    """Bool masks (B, *shape) of logits (B, 1, h, w): the logits resized bilinearly to `shape`
    when it differs (thresholding first would make an enlarged mask's edge blocky), then the
    metrics' rule."""
    if tuple(logits.shape[-2:]) != tuple(shape):
        logits = F.interpolate(logits.float(), size=shape, mode="bilinear", align_corners=False)
    return logits_to_masks(logits[:, 0], threshold)


@dataclass
class Predictor:
    """A trained network with the preprocessing, precision and threshold it was tested with.

    Build one with `Predictor.from_checkpoint`; `precision` and `threshold` say what it uses,
    `tested_precision` and `tested_threshold` what the run's test stage used.
    """

    module: nn.Module
    preprocess: SlicePreprocessor
    device: torch.device
    precision: str
    threshold: float
    tested_precision: str
    tested_threshold: float
    matmul_precision: str | None = None

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_path: str | os.PathLike,
        device: str | torch.device = "auto",
        precision: str | None = None,
        threshold: float | None = None,
        trust: bool = False,
    ) -> Predictor:
        """Loads `ckpt_path` (without running code unless `trust`) onto `device` ("auto": the
        GPU when there is one). `precision`, `threshold`: None for the tested ones."""
        from brainseg.module import load_module  # Lightning's module, not its Trainer

        device = resolve_device(device)
        module = load_module(ckpt_path, map_location=device, trust=trust)
        return cls.from_module(module, device, precision, threshold)

    @classmethod
    def from_module(
        cls,
        module: nn.Module,
        device: str | torch.device = "auto",
        precision: str | None = None,
        threshold: float | None = None,
    ) -> Predictor:
        """The same for a loaded `SegmentationModule` (`brainseg.module.load_module`), which it
        moves to `device` and, for a `*-true` precision, casts."""
        device = resolve_device(device)
        config = module.hparams.config
        tested = tested_precision(config)
        tested_threshold = float((config.get("metrics") or {}).get("threshold", 0.5))
        chosen = str(precision) if precision is not None else tested
        parse_precision(chosen)
        if threshold is not None:
            check_threshold(threshold)
        return cls(
            module=cast_for_precision(module.to(device).eval(), chosen),
            preprocess=SlicePreprocessor.from_config(config["data"]),
            device=device,
            precision=chosen,
            threshold=float(threshold) if threshold is not None else tested_threshold,
            tested_precision=tested,
            tested_threshold=tested_threshold,
            matmul_precision=(config.get("runtime") or {}).get("matmul_precision"),
        )

    def logits(self, images: Tensor, tta: bool = False) -> Tensor:
        """See `predict_logits`; `images` are moved to the predictor's device."""
        return predict_logits(
            self.module, images.to(self.device), self.precision, tta, self.matmul_precision
        )

    def masks(self, images: Tensor, tta: bool = False) -> Tensor:
        """Bool (B, H, W) masks at the network's input size."""
        return masks_at(self.logits(images, tta), tuple(images.shape[-2:]), self.threshold)

    def describe(self) -> str:
        """What it runs with, and where that comes from: for predict's output and log."""
        precision = (
            "as the checkpoint was tested"
            if self.precision == self.tested_precision
            else f"the checkpoint was tested in {self.tested_precision}"
        )
        threshold = (
            "the checkpoint's metrics.threshold"
            if self.threshold == self.tested_threshold
            else f"the checkpoint's metrics.threshold is {self.tested_threshold:g}"
        )
        return (
            f"precision {self.precision} ({precision}) on {self.device}, "
            f"threshold {self.threshold:g} ({threshold})"
        )


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU; anything else as torch names it."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
