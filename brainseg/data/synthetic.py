"""Deterministic synthetic brain-like slices with tumor-like blobs, for tests and smoke runs."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from brainseg.data.sources import Sample, Source

# Lesions per slice, cycled: slices without tumor and slices with several both occur.
LESION_COUNTS = (1, 0, 2, 1, 3)


class SyntheticSource(Source):
    """Grey ellipse "brains" with a bright rim and brighter, irregular tumor blobs.

    Slice i belongs to patient `i * num_patients // num_slices` (neighbouring slices share a
    patient, as in real scans); the tumor type cycles over patients. Tumors are brighter than
    the tissue and noise is added, so a network learns them within a few epochs.

    Args:
        num_slices: number of slices.
        num_patients: number of patients the slices are spread over.
        size: side of the square slices in pixels.
        seed: generator seed; the same arguments always give the same slices.
    """

    def __init__(
        self, num_slices: int = 64, num_patients: int = 16, size: int = 128, seed: int = 0
    ):
        if not 1 <= num_patients <= num_slices:
            raise ValueError(
                f"num_patients={num_patients} must be between 1 and num_slices={num_slices}"
            )
        if size < 32:
            raise ValueError(f"size={size} is too small for brain-like slices: use 32 or more")
        self.num_slices = num_slices
        self.num_patients = num_patients
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return self.num_slices

    def cache_key(self) -> str:
        return f"synthetic-v1:{self.num_slices}:{self.num_patients}:{self.size}:{self.seed}"

    def patient(self, index: int) -> int:
        return index * self.num_patients // self.num_slices

    def folds(self) -> dict[str, int]:
        return {str(i): self.patient(i) % 5 + 1 for i in range(self.num_slices)}

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.num_slices):
            yield self.sample(i)

    def sample(self, index: int) -> Sample:
        """Slice `index`, generated from (seed, index) alone."""
        rng = np.random.default_rng([self.seed, index])
        n = self.size
        y, x = np.mgrid[0:n, 0:n] / n - 0.5  # coordinates in [-0.5, 0.5)
        ay, ax = rng.uniform(0.34, 0.44), rng.uniform(0.28, 0.38)
        r = np.sqrt((y / ay) ** 2 + (x / ax) ** 2)
        brain = r < 0.92
        image = np.where(r < 1.0, 0.6, 0.0)  # skull rim
        texture = 0.08 * np.sin(9 * x + rng.uniform(0, 6)) * np.cos(7 * y + rng.uniform(0, 6))
        image = np.where(brain, 0.35 + texture, image)
        mask = np.zeros((n, n), dtype=bool)
        for cy, cx, radius in _lesion_discs(rng, LESION_COUNTS[index % len(LESION_COUNTS)], ay, ax):
            mask |= _blob(rng, y - cy, x - cx, radius)
        image = np.where(mask, 0.8 + 0.05 * rng.standard_normal((n, n)), image)
        image = image + 0.06 * rng.standard_normal((n, n))
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        pid = self.patient(index)
        meta = {"id": str(index), "pid": f"P{pid:03d}", "label": pid % 3 + 1}
        return Sample(image, mask.astype(np.uint8), meta)


def _lesion_discs(
    rng: np.random.Generator, count: int, ay: float, ax: float
) -> list[tuple[float, float, float]]:
    """Centres and radii (2 % to 10 % of the slice) of `count` separate lesions in the brain."""
    discs: list[tuple[float, float, float]] = []
    while len(discs) < count:
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5)
        cy, cx, radius = (
            dist * ay * np.sin(angle),
            dist * ax * np.cos(angle),
            rng.uniform(0.02, 0.1),
        )
        # Keep lesions apart (1.3 covers the wobble) so that they count as separate tumors.
        if all(np.hypot(cy - y, cx - x) > 1.3 * (radius + r) + 0.02 for y, x, r in discs):
            discs.append((cy, cx, radius))
    return discs


def _blob(rng: np.random.Generator, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    """An irregular disc of mean `radius` around the origin of (dy, dx)."""
    theta = np.arctan2(dy, dx)
    wobble = 1 + 0.25 * np.sin(rng.integers(2, 5) * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) < radius * wobble
