"""A folder of `images/` and `masks/` paired by file stem, with an optional `metadata.csv`."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from brainseg.data.readers import read_image, read_mask, suffixes
from brainseg.data.sources import (
    FOLDS,
    ContentCheck,
    Sample,
    Source,
    check_pair,
    first_few,
    natural_key,
)


class FolderSource(Source):
    """Slices stored as image files: `root/images/<id>.<ext>` and `root/masks/<id>.<ext>`.

    Every file in images/ and masks/ must have a suffix that `brainseg.data.readers` reads;
    masks are decoded by what the file means (grey values, palette index or alpha channel,
    see docs/data.md) and hold 0 for background and 1, 255 or 65535 for tumor; an all-zero
    mask is a slice without tumor. An optional `root/metadata.csv` with columns
    `sample_id,pid[,label][,fold]` gives patient ids (for patient splits), tumor types and
    cross-validation folds (1..5, empty where unknown); each of its rows must name an image
    (sample_id = file stem), once. Images without a row have no pid, which only
    `data.split=image` accepts (see `resolve_mode`).
    Ids are ordered naturally (2 before 10).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.pid_file = self.root / "metadata.csv"
        self._pairs: list[tuple[str, Path, Path]] | None = None
        self._meta: dict[str, dict] | None = None

    def pairs(self) -> list[tuple[str, Path, Path]]:
        """(id, image path, mask path) of every slice; raises when a file has no partner or
        cannot be a slice (a suffix no reader reads, a subfolder, a repeated stem)."""
        if self._pairs is None:
            images, masks, refused = self._scan()
            problems = unpaired(images, masks)
            if refused or problems:
                lines = refused + problems
                shown = "\n  ".join(lines[:10]) + ("\n  ..." if len(lines) > 10 else "")
                counts = [f"{len(refused)} file(s) that cannot be slices"] if refused else []
                counts += [f"{len(problems)} unpaired file(s)"] if problems else []
                fixes = ["convert or remove those"] if refused else []
                fixes += ["add the missing files or remove the strays"] if problems else []
                raise ValueError(
                    f"{' and '.join(counts)} in {self.root}:\n  {shown}\n{'; '.join(fixes)}; "
                    f"`python -m brainseg.data verify data=folder data.root={self.root}` lists "
                    "every problem"
                )
            ids = sorted(images, key=natural_key)
            self._pairs = [(i, images[i], masks[i]) for i in ids]
        return self._pairs

    def _scan(self) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
        """Every file of images/ and masks/ by stem, and one line per entry that cannot be a
        slice (those files stay in the dicts, so that pairing and metadata still see them)."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data folder {self.root} does not exist: set data.root to a folder holding "
                "images/ and masks/"
            )
        (images, refused), (masks, refused_masks) = (
            _by_stem(self.root / sub) for sub in ("images", "masks")
        )
        if not images and not refused:
            raise ValueError(
                f"no images ({', '.join(suffixes())}) in {self.root / 'images'}: put the "
                "slices there and their masks, with the same file stems, in masks/"
            )
        return images, masks, refused + refused_masks

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

    def verify(self, content: ContentCheck | None = None) -> list[str]:
        """Every problem of the folder: files no reader reads, unpaired files, unreadable files,
        sizes, mask values, metadata rows that name no image, repeat a sample_id or give a fold
        outside 1..5. Each readable pair is also passed to `content`."""
        images, masks, problems = self._scan()
        problems += unpaired(images, masks)
        both = sorted(set(images) & set(masks), key=natural_key)
        readable = [s for s in both if _readable(images[s]) and _readable(masks[s])]
        for sid in tqdm(readable, desc="verify", unit="pair"):
            try:
                image, mask = read_image(images[sid]), read_mask(masks[sid])
            except ValueError as error:
                problems.append(str(error))
                continue
            pair_problems = check_pair(image, mask, f"{images[sid]} / {masks[sid]}")
            problems += pair_problems
            if content is not None and not pair_problems:
                content.add(f"{images[sid]} / {masks[sid]}", image, mask)
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


def _by_stem(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """Every file in `folder` by stem (hidden files aside), and one line per entry that cannot
    be a slice: a suffix no reader reads, a subfolder, a second file with a stem already seen.
    Nothing is skipped silently: a skipped slice would shrink the data set without a word."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} does not exist: the data folder needs images/ and masks/ side by side"
        )
    found: dict[str, Path] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            problems.append(
                f"{path}: a subfolder, which is not read; images/ and masks/ hold the files "
                "themselves: move its files up or remove it"
            )
            continue
        if path.stem in found:
            problems.append(
                f"{found[path.stem]} and {path} share the stem {path.stem!r}: keep one of them"
            )
            continue
        if not _readable(path):
            problems.append(
                f"{path}: no reader for {path.suffix or 'files without a suffix'} "
                f"(the readers take {', '.join(suffixes())}): convert it to PNG or remove it"
            )
        found[path.stem] = path
    return found, problems


def _readable(path: Path) -> bool:
    return path.suffix.lower() in suffixes()


def read_metadata(path: Path) -> list[tuple[int, str, dict]]:
    """(line, sample_id, {"pid", "label", "fold"}) per row of metadata.csv; [] when absent."""
    if not path.exists():
        return []
    # utf-8-sig: Excel writes a byte order mark before the first column name.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "sample_id" not in columns or "pid" not in columns:
            raise ValueError(
                f"{path} has columns {columns}; it needs sample_id,pid[,label][,fold] "
                "(sample_id = the file stem)"
            )
        rows = []
        for line, row in enumerate(reader, start=2):
            sid = (row["sample_id"] or "").strip()
            fold = (row.get("fold") or "").strip()
            try:
                fields = {
                    "pid": (row["pid"] or "").strip(),
                    "label": int(row.get("label") or 0),
                    "fold": int(fold) if fold else 0,  # 0: unknown
                }
            except ValueError as error:
                raise ValueError(
                    f"{path}, line {line}: {error}; label and fold must be integers"
                ) from error
            if fold and fields["fold"] not in FOLDS:
                raise ValueError(
                    f"{path}, line {line} (sample_id {sid}): fold {fold} is not one of the "
                    f"cross-validation folds {FOLDS.start}..{FOLDS.stop - 1}: correct it, or "
                    "leave the fold empty where it is unknown"
                )
            rows.append((line, sid, fields))
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
