"""A folder of `images/` and `masks/` paired by file stem, with an optional `metadata.csv`."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from brainseg.data.sources import Sample, Source, check_pair, first_few, is_binary, natural_key

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg")


class FolderSource(Source):
    """Slices stored as image files: `root/images/<id>.<ext>` and `root/masks/<id>.<ext>`.

    Masks hold 0 for background and 255 (or 1) for tumor; an all-zero mask is a slice
    without tumor. An optional `root/metadata.csv` with columns `sample_id,pid[,label][,fold]`
    gives patient ids (for patient splits), tumor types and cross-validation folds; each of
    its rows must name an image (sample_id = file stem), once. Images without a row have no
    pid, which only `data.split=image` accepts (see `resolve_mode`).
    Ids are ordered naturally (2 before 10).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.pid_file = self.root / "metadata.csv"
        self._pairs: list[tuple[str, Path, Path]] | None = None
        self._meta: dict[str, dict] | None = None

    def pairs(self) -> list[tuple[str, Path, Path]]:
        """(id, image path, mask path) of every slice; raises when a file has no partner."""
        if self._pairs is None:
            images, masks = self._scan()
            problems = unpaired(images, masks)
            if problems:
                shown = "\n  ".join(problems[:10]) + ("\n  ..." if len(problems) > 10 else "")
                raise ValueError(
                    f"{len(problems)} unpaired file(s) in {self.root}:\n  {shown}\nadd the missing "
                    "files or remove the strays; `python -m brainseg.data verify data=folder "
                    f"data.root={self.root}` lists every problem"
                )
            ids = sorted(images, key=natural_key)
            self._pairs = [(i, images[i], masks[i]) for i in ids]
        return self._pairs

    def _scan(self) -> tuple[dict[str, Path], dict[str, Path]]:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data folder {self.root} does not exist: set data.root to a folder holding "
                "images/ and masks/"
            )
        images, masks = (_by_stem(self.root / sub) for sub in ("images", "masks"))
        if not images:
            raise ValueError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.root / 'images'}: put the "
                "slices there and their masks, with the same file stems, in masks/"
            )
        return images, masks

    def metadata(self) -> dict[str, dict]:
        """Per id: pid, label and fold from metadata.csv (empty when there is none).

        Raises when a row names no image or a sample_id has more than one row.
        """
        if self._meta is None:
            rows = read_metadata(self.pid_file)
            problems = metadata_problems(self.pid_file, rows, self._scan()[0])
            if problems:
                raise ValueError("\n".join(problems))
            self._meta = {sid: fields for _, sid, fields in rows}
        return self._meta

    def patient_ids(self) -> dict[str, str]:
        # From metadata.csv alone: no image is read (verify calls it on broken folders).
        meta = self.metadata()
        ids = sorted(self._scan()[0], key=natural_key)
        return {sid: meta.get(sid, {}).get("pid", "") for sid in ids}

    def __len__(self) -> int:
        return len(self.pairs())

    def __iter__(self) -> Iterator[Sample]:
        meta = self.metadata()
        for sid, image_path, mask_path in self.pairs():
            image = read_image(image_path)
            mask = read_mask(mask_path)
            problems = check_pair(image, mask, f"{image_path} / {mask_path}")
            if problems:
                raise ValueError(problems[0])
            row = meta.get(sid, {})
            yield Sample(
                image, mask, {"id": sid, "pid": row.get("pid", ""), "label": row.get("label", 0)}
            )

    def cache_key(self) -> str:
        # File names, sizes and modification times, and the metadata: cheap to compute and
        # changes whenever a file is added, removed or rewritten. The metadata is checked here
        # too, so that a cache converted before a check existed is not used with bad rows.
        self.metadata()
        digest = hashlib.sha1()
        for sid, image_path, mask_path in self.pairs():
            for path in (image_path, mask_path):
                stat = path.stat()
                digest.update(f"{sid}|{path.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        if self.pid_file.exists():
            digest.update(self.pid_file.read_bytes())
        return f"folder:{digest.hexdigest()}"

    def folds(self) -> dict[str, int] | None:
        meta = self.metadata()
        ids = [sid for sid, _, _ in self.pairs()]
        if not ids or any(meta.get(i, {}).get("fold", 0) == 0 for i in ids):
            return None
        return {i: meta[i]["fold"] for i in ids}

    def verify(self) -> list[str]:
        """Every problem of the folder: unpaired files, unreadable files, sizes, mask values,
        metadata rows that name no image or repeat a sample_id."""
        images, masks = self._scan()
        problems = unpaired(images, masks)
        both = sorted(set(images) & set(masks), key=natural_key)
        for sid in tqdm(both, desc="verify", unit="pair"):
            try:
                image, mask = read_image(images[sid]), read_mask(masks[sid])
            except ValueError as error:
                problems.append(str(error))
                continue
            problems += check_pair(image, mask, f"{images[sid]} / {masks[sid]}")
        try:
            problems += metadata_problems(self.pid_file, read_metadata(self.pid_file), images)
        except ValueError as error:
            problems.append(str(error))
        return problems


def unpaired(images: dict[str, Path], masks: dict[str, Path]) -> list[str]:
    """One line per image without a mask and per mask without an image."""
    lines = [f"{images[s]}: no mask with stem {s!r} in masks/" for s in images if s not in masks]
    lines += [f"{masks[s]}: no image with stem {s!r} in images/" for s in masks if s not in images]
    return lines


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist: the data folder needs images/ and masks/ side by side"
        )
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in found:
            raise ValueError(
                f"{found[path.stem]} and {path} share the stem {path.stem!r}: keep one of them"
            )
        found[path.stem] = path
    return found


def read_image(path: Path) -> np.ndarray:
    """A grey (H, W) array from an image file (colour is converted to grey)."""
    try:
        with Image.open(path) as img:
            if img.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                img = img.convert("L")
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"cannot read {path} ({error}): re-export it or remove the pair"
        ) from error
    if array.ndim == 3:  # e.g. a multi-channel TIFF
        array = array[..., 0]
    return array


def read_mask(path: Path) -> np.ndarray:
    """A (H, W) mask array; masks stored as JPEG are thresholded at half range."""
    mask = read_image(path)
    if path.suffix.lower() in LOSSY_SUFFIXES and not is_binary(np.unique(mask)):
        # JPEG compression blurs the 0/255 edge into intermediate values.
        mask = (mask >= 128).astype(np.uint8) * 255
    return mask


def read_metadata(path: Path) -> list[tuple[int, str, dict]]:
    """(line, sample_id, {"pid", "label", "fold"}) per row of metadata.csv; [] when absent."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "sample_id" not in columns or "pid" not in columns:
            raise ValueError(
                f"{path} has columns {columns}; it needs sample_id,pid[,label][,fold] "
                "(sample_id = the file stem)"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                fields = {
                    "pid": (row["pid"] or "").strip(),
                    "label": int(row.get("label") or 0),
                    "fold": int(row.get("fold") or 0),
                }
            except ValueError as error:
                raise ValueError(
                    f"{path}, line {line}: {error}; label and fold must be integers"
                ) from error
            rows.append((line, (row["sample_id"] or "").strip(), fields))
    return rows


def metadata_problems(
    path: Path, rows: list[tuple[int, str, dict]], images: dict[str, Path]
) -> list[str]:
    """One line for the sample_ids on more than one row, one for the rows naming no image."""
    lines: dict[str, list[int]] = {}
    for line, sid, _ in rows:
        lines.setdefault(sid, []).append(line)
    problems = []
    repeated = [f"{sid} (lines {', '.join(map(str, n))})" for sid, n in lines.items() if len(n) > 1]
    if repeated:
        problems.append(
            f"{path}: {len(repeated)} sample_id(s) on more than one row: {first_few(repeated)}; "
            "keep one row per image (with several, which pid and label hold is ambiguous)"
        )
    stray = [f"line {line} ({sid})" for line, sid, _ in rows if sid not in images]
    if stray:
        example = next(iter(images.values()))
        problems.append(
            f"{path}: {len(stray)} row(s) name no image in {example.parent}: {first_few(stray)}; "
            f"sample_id is the image's file stem (e.g. {example.stem} for images/{example.name}): "
            "correct these rows or remove them"
        )
    return problems
