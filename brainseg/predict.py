"""Tumor masks and overlays for new slices with a trained checkpoint.

    python -m brainseg.predict ckpt_path=<run>/checkpoints/best.ckpt input=scans/ output=masks
    python -m brainseg.predict ckpt_path=... input='scans/**/*.mat' predict.tta=true

Each input `<stem>.<ext>` (PNG, JPG, TIF or figshare .mat) gives `<stem>_mask.png` (0/255, at
the input's own size) and `<stem>_overlay.png`, in the output folder at the input's place
below the input folder (a glob's: its part before the first wildcard), plus one
`predictions.csv` for the lot. Slices are prepared, run and thresholded as the checkpoint's
test stage did (`brainseg.inference.Predictor`).
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from brainseg.atomic import atomic_path, write_csv
from brainseg.data.cache import to_uint8
from brainseg.data.readers import read_image as read_slice
from brainseg.data.readers import suffixes

log = logging.getLogger(__name__)


SUFFIXES = suffixes()  # every format of the reader registry
OVERLAY_COLOR = np.array([255, 40, 40], dtype=np.float32)


@dataclass
class PredictResult:
    """What `predict` did: one row per written slice, one (file, reason) per failure, and the
    precision and threshold it ran with, with where they come from (`settings`)."""

    rows: list[dict] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    settings: str = ""


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


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """RGB uint8: the grey slice with the mask tinted red."""
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
    threshold: float | None = None,
    device: str = "auto",
    overlay_alpha: float = 0.4,
    precision: str | None = None,
    trust_checkpoint: bool = False,
) -> PredictResult:
    """Writes a mask and an overlay per input slice into `output`; unreadable inputs are
    reported in the result (and logged) without stopping the others.

    Args:
        threshold, precision: None for those the checkpoint's run was tested with (its
            `metrics.threshold`, its `trainer.precision`).
        trust_checkpoint: load a checkpoint that needs more than brainseg's checkpoint types
            (`brainseg.checkpoints`); it may run code.

    Raises:
        ValueError: before anything is written, when two inputs would share an output file or
            an output would land in a folder the input covers.
    """
    # torch and the network's code load here, not at import: --help answers in a second.
    import torch

    from brainseg.inference import Predictor, masks_at

    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ValueError(f"predict.threshold={threshold} must lie strictly between 0 and 1")
    if batch_size < 1:
        raise ValueError(f"predict.batch_size={batch_size} must be at least 1")
    files = find_inputs(inputs)
    out_dir = Path(output)
    destinations = output_stems(files, input_folder(inputs), out_dir)
    check_output_folder(inputs, files, out_dir, destinations)
    predictor = Predictor.from_checkpoint(
        ckpt_path, device, precision=precision, threshold=threshold, trust=trust_checkpoint
    )
    log.info("predicting with %s", predictor.describe())
    result = PredictResult(settings=predictor.describe())
    with tqdm(total=len(files), desc="predict", unit="slice") as bar:
        for batch in _batches(files, batch_size):
            loaded = []
            for path in batch:
                try:
                    image = read_slice(path)
                    loaded.append((path, image, predictor.preprocess(image)))
                except (ValueError, OSError) as error:
                    result.failed.append((path, str(error)))
                    log.error("skipped: %s", _naming(path, error))
            if loaded:
                logits = predictor.logits(torch.stack([t for _, _, t in loaded]), tta)
                for (path, image, _), one in zip(loaded, logits, strict=True):
                    mask = masks_at(one[None], image.shape, predictor.threshold)[0]
                    mask = mask.to(torch.uint8).mul(255).cpu().numpy()
                    row = _write(path, destinations[path], image, mask, overlay_alpha)
                    row.update(precision=predictor.precision, threshold=predictor.threshold)
                    result.rows.append(row)
            bar.update(len(batch))
    if result.rows:
        write_csv(out_dir / "predictions.csv", result.rows)
    return result


def input_folder(spec: str | os.PathLike) -> Path:
    """The folder that outputs mirror: a folder itself, a file's folder, or a glob's part before
    its first wildcard."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    fixed = []
    for part in path.parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _descends(spec: str | os.PathLike) -> bool:
    """Whether a glob reaches below its input folder (`**`, or a wildcard in a folder name)."""
    path = Path(spec)
    if path.exists():
        return False
    return "**" in path.name or any(glob.has_magic(part) for part in path.parts[:-1])


def output_stems(files: list[Path], folder: Path, out_dir: Path) -> dict[Path, Path]:
    """Each input's output prefix: `out_dir/<its folder below folder>/<stem>`, `<stem>_<ext>`
    where two inputs of one folder share a stem (a.png and a.mat); `<prefix>_mask.png` and
    `<prefix>_overlay.png` are written. A ValueError naming both inputs when two would still
    share a file (also on a case-insensitive file system)."""
    counts: dict[tuple[Path, str], int] = {}
    for path in files:
        counts[path.parent, path.stem] = counts.get((path.parent, path.stem), 0) + 1
    prefixes: dict[Path, Path] = {}
    taken: dict[str, Path] = {}
    for path in files:
        below = Path(os.path.relpath(path.parent, folder))
        if below.parts[:1] == ("..",):  # outside the input folder: would escape out_dir
            raise ValueError(f"{path} lies outside the input folder {folder}")
        shared = counts[path.parent, path.stem] > 1
        stem = f"{path.stem}_{path.suffix.lstrip('.').lower()}" if shared else path.stem
        prefix = out_dir / below / stem
        key = str(prefix).casefold()
        if key in taken:
            raise ValueError(
                f"{taken[key]} and {path} would both write {prefix}_mask.png: rename one, or "
                "predict them into different output folders"
            )
        taken[key] = path
        prefixes[path] = prefix
    return prefixes


def check_output_folder(
    spec: str | os.PathLike, files: list[Path], out_dir: Path, prefixes: dict[Path, Path]
) -> None:
    """A ValueError, before anything is written, when an output would land in a folder the
    input takes its slices from: the next prediction over that input would predict the masks.
    """
    sources = {path.parent.resolve(): path for path in files}
    for prefix in prefixes.values():
        folder = prefix.parent.resolve()
        if folder in sources:
            raise ValueError(
                f"output={out_dir} would write masks into {folder}, the folder of the input "
                f"{sources[folder]}: a later prediction over that input would take the masks "
                "for slices; give an output folder outside the input's"
            )
    base = input_folder(spec).resolve()
    out = out_dir.resolve()
    if _descends(spec) and (out == base or base in out.parents):
        raise ValueError(
            f"output={out_dir} lies inside {base}, which input={spec} searches below: a later "
            "prediction with that input would take the masks for slices; give an output "
            f"folder outside {base}"
        )


def _naming(path: Path, reason: object) -> str:
    """The reason, prefixed with the file unless it names it already."""
    return str(reason) if str(path) in str(reason) else f"{path}: {reason}"


def _batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def _write(path: Path, prefix: Path, image: np.ndarray, mask: np.ndarray, alpha: float) -> dict:
    mask_path = prefix.with_name(f"{prefix.name}_mask.png")
    overlay_path = prefix.with_name(f"{prefix.name}_overlay.png")
    mask_path.parent.mkdir(parents=True, exist_ok=True)
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
        precision=p.precision,
        trust_checkpoint=cfg.trust_checkpoint,
    )
    print(f"{len(result.rows)} slice(s) predicted into {Path(cfg.output).resolve()}")
    print(f"with {result.settings}")
    if result.failed:
        print(f"{len(result.failed)} input(s) failed:", file=sys.stderr)
        for path, reason in result.failed:
            print(f"  {_naming(path, reason)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
