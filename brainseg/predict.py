"""Tumor masks and overlays for new slices with a trained checkpoint.

    python -m brainseg.predict ckpt_path=<run>/checkpoints/best.ckpt input=scans/ output=masks
    python -m brainseg.predict ckpt_path=... input='scans/*.mat' predict.tta=true

Each input `<stem>.<ext>` (PNG, JPG, TIF or figshare .mat) gives `<stem>_mask.png` (0/255, at
the input's own size) and `<stem>_overlay.png`, plus one `predictions.csv` for the lot.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import numpy as np
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from brainseg.atomic import atomic_path, write_csv

# torch, Lightning and the readers are imported where they are used: --help, tab completion
# and a mistyped override answer before any of them loads.
if TYPE_CHECKING:
    import torch

    from brainseg.module import SegmentationModule

log = logging.getLogger(__name__)


SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".mat")
OVERLAY_COLOR = np.array([255, 40, 40], dtype=np.float32)


@dataclass
class PredictResult:
    """What `predict` did: one row per written slice, one (file, reason) per failure."""

    rows: list[dict] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def find_inputs(spec: str | os.PathLike) -> list[Path]:
    """The slices named by `spec`: a file, a folder (its image and .mat files) or a glob."""
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES]
    else:
        files = [Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file()]
    if not files:
        raise FileNotFoundError(
            f"input={spec} matches no slice: give a file, a folder or a glob of "
            f"{', '.join(SUFFIXES)} files"
        )
    return sorted(files)


def read_slice(path: Path) -> np.ndarray:
    """A (H, W) grey slice from an image file or a figshare .mat (its `cjdata.image`)."""
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    from brainseg.data.figshare import read_mat
    from brainseg.data.folder import read_image

    image = read_mat(path).image if path.suffix.lower() == ".mat" else read_image(path)
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"{path}: expected a 2D slice, found an array of shape {image.shape}")
    return image


class SlicePreprocessor:
    """Prepares a slice exactly as the run's data pipeline prepared its test slices: uint8 by
    min-max, resize to the training size, the test-stage transform (scaling, channels, mean/std).
    """

    def __init__(self, config: dict) -> None:
        from brainseg.data.transforms import build_transforms

        data = config["data"]
        self.size = int(data["image_size"])
        self.transform = build_transforms(
            "predict", None, int(data["in_channels"]), data["mean"], data["std"]
        )

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        from brainseg.data.cache import resize_image, to_uint8

        small = resize_image(to_uint8(image), self.size)
        tensor, _ = self.transform(small, np.zeros_like(small))
        return tensor  # (C, size, size)


def predict_probabilities(
    module: SegmentationModule, images: torch.Tensor, tta: bool
) -> torch.Tensor:
    """Tumor probabilities (B, 1, H, W); with `tta`, averaged with the horizontally flipped pass."""
    import torch

    from brainseg.metrics import probabilities

    with torch.inference_mode():
        probs = probabilities(module(images))
        if tta:
            flipped = probabilities(module(images.flip(-1))).flip(-1)
            probs = (probs + flipped) / 2
    return probs


def to_original_size(prob: torch.Tensor, shape: tuple[int, int], threshold: float) -> np.ndarray:
    """Binary uint8 mask (0/255) at `shape`: the probability resized bilinearly, then thresholded
    (thresholding first would make the mask's edge blocky when enlarging)."""
    import torch
    import torch.nn.functional as F

    from brainseg.metrics import to_masks

    prob = F.interpolate(prob[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
    return (to_masks(prob, threshold).to(torch.uint8) * 255).cpu().numpy()


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """RGB uint8: the grey slice with the mask tinted red."""
    from brainseg.data.cache import to_uint8

    grey = to_uint8(image).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    tumor = mask > 0
    rgb[tumor] = (1 - alpha) * rgb[tumor] + alpha * OVERLAY_COLOR
    return np.clip(rgb, 0, 255).astype(np.uint8)


def predict(
    ckpt_path: str | os.PathLike,
    inputs: str | os.PathLike,
    output: str | os.PathLike,
    batch_size: int = 16,
    tta: bool = False,
    threshold: float = 0.5,
    device: str = "auto",
    overlay_alpha: float = 0.4,
) -> PredictResult:
    """Writes a mask and an overlay per input slice into `output`; unreadable inputs are
    reported in the result (and logged) without stopping the others."""
    import torch

    from brainseg.module import load_module

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"predict.threshold={threshold} must lie strictly between 0 and 1")
    if batch_size < 1:
        raise ValueError(f"predict.batch_size={batch_size} must be at least 1")
    files = find_inputs(inputs)
    device = _device(device)
    module = load_module(ckpt_path, map_location=device)
    prepare = SlicePreprocessor(module.hparams.config)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = _output_stems(files)
    result = PredictResult()
    with tqdm(total=len(files), desc="predict", unit="slice") as bar:
        for batch in _batches(files, batch_size):
            loaded = []
            for path in batch:
                try:
                    image = read_slice(path)
                    loaded.append((path, image, prepare(image)))
                except (ValueError, OSError) as error:
                    result.failed.append((path, str(error)))
                    log.error("skipped: %s", _naming(path, error))
            if loaded:
                images = torch.stack([t for _, _, t in loaded]).to(device)
                probs = predict_probabilities(module, images, tta)[:, 0]
                for (path, image, _), prob in zip(loaded, probs, strict=True):
                    mask = to_original_size(prob, image.shape, threshold)
                    result.rows.append(
                        _write(path, stems[path], image, mask, out_dir, overlay_alpha)
                    )
            bar.update(len(batch))
    if result.rows:
        write_csv(out_dir / "predictions.csv", result.rows)
    return result


def _naming(path: Path, reason: object) -> str:
    """The reason, prefixed with the file unless it names it already."""
    return str(reason) if str(path) in str(reason) else f"{path}: {reason}"


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def _output_stems(files: list[Path]) -> dict[Path, str]:
    """`<stem>`, or `<stem>_<ext>` where two inputs share a stem (a.png and a.mat)."""
    counts: dict[str, int] = {}
    for path in files:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    return {
        p: p.stem if counts[p.stem] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        for p in files
    }


def _write(
    path: Path, stem: str, image: np.ndarray, mask: np.ndarray, out_dir: Path, alpha: float
) -> dict:
    mask_path, overlay_path = out_dir / f"{stem}_mask.png", out_dir / f"{stem}_overlay.png"
    _save_png(Image.fromarray(mask, mode="L"), mask_path)
    _save_png(Image.fromarray(overlay(image, mask, alpha), mode="RGB"), overlay_path)
    return {
        "input": str(path),
        "mask": str(mask_path),
        "overlay": str(overlay_path),
        "height": mask.shape[0],
        "width": mask.shape[1],
        "tumor_pixels": int((mask > 0).sum()),
    }


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# conf/ beside this module: the package's own configs, in a checkout or an installed wheel.
@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    p = cfg.predict
    result = predict(
        cfg.ckpt_path,
        cfg.input,
        cfg.output,
        batch_size=p.batch_size,
        tta=p.tta,
        threshold=p.threshold,
        device=p.device,
        overlay_alpha=p.overlay_alpha,
    )
    print(f"{len(result.rows)} slice(s) predicted into {Path(cfg.output).resolve()}")
    if result.failed:
        print(f"{len(result.failed)} input(s) failed:", file=sys.stderr)
        for path, reason in result.failed:
            print(f"  {_naming(path, reason)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
