"""A folder data set with tumor-free slices, made from one whose every slice has a tumor.

Each slice is kept, and a copy of it is added with the tumor painted out (OpenCV's inpainting
of the dilated mask) and an empty mask, under the same patient, so that half the slices have no
tumor: what users' own data often looks like, and what the empty-slice metrics are for.

    python benchmarks/tumor_free_copy.py ../shared/datasets/figshare-brain-tumor-png256 OUT
    python -m brainseg.train fit=false ckpt_path=<run>/checkpoints/best.ckpt data=folder \
        data.root=OUT ...
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm


def paint_out(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`image` with the tumor of `mask` (and a 5-pixel margin) filled in from its surroundings."""
    region = cv2.dilate((mask > 0).astype(np.uint8), np.ones((11, 11), np.uint8))
    return cv2.inpaint(image, region, 5, cv2.INPAINT_TELEA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder data set: images/, masks/, metadata.csv")
    parser.add_argument("out", type=Path, help="where to write the copy")
    args = parser.parse_args()
    for sub in ("images", "masks"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    with (args.root / "metadata.csv").open() as f:
        rows = list(csv.DictReader(f))
    out_rows = []
    for row in tqdm(rows, desc="tumor-free copies", unit="slice"):
        sample = row["sample_id"]
        image = cv2.imread(str(args.root / "images" / f"{sample}.png"), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(args.root / "masks" / f"{sample}.png"), cv2.IMREAD_GRAYSCALE)
        empty = f"{sample}_empty"
        cv2.imwrite(str(args.out / "images" / f"{sample}.png"), image)
        cv2.imwrite(str(args.out / "masks" / f"{sample}.png"), mask)
        cv2.imwrite(str(args.out / "images" / f"{empty}.png"), paint_out(image, mask))
        cv2.imwrite(str(args.out / "masks" / f"{empty}.png"), np.zeros_like(mask))
        out_rows += [row, {**row, "sample_id": empty}]
    with (args.out / "metadata.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(out_rows)
    print(f"{len(out_rows)} slices ({len(rows)} tumor-free) in {args.out}")


if __name__ == "__main__":
    main()
