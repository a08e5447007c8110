"""HD95, ASSD and NSD: MONAI's distances, checked against scipy distance transforms on shapes with
known answers, against MONAI's own compute_* functions, and the empty-mask rules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from brainseg.metrics.surface import NSD_TOLERANCE, surface_scores, worst_distance


def _edges(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels: in the mask, with a 4-neighbour outside it (the image's outside too)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _scipy_reference(pred: np.ndarray, truth: np.ndarray, tolerance: float):
    """hd95, assd, nsd from Euclidean distance transforms of each boundary's complement."""
    ep, et = _edges(pred), _edges(truth)
    to_truth = ndimage.distance_transform_edt(~et)[ep]
    to_pred = ndimage.distance_transform_edt(~ep)[et]
    both = np.concatenate([to_truth, to_pred])
    hd95 = max(np.percentile(to_truth, 95), np.percentile(to_pred, 95))
    return hd95, both.mean(), np.mean(both <= tolerance)


def _scores(pred: np.ndarray, truth: np.ndarray, tolerance: float = NSD_TOLERANCE):
    out = surface_scores(torch.from_numpy(pred[None]), torch.from_numpy(truth[None]), tolerance)
    return out["hd95"].item(), out["assd"].item(), out["nsd"].item()


def _square(size: int, start: int, stop: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[start:stop, start:stop] = True
    return mask


def test_nested_squares_have_their_known_distances():
    # A 30-px square and, 2 px inside it, a 26-px one. Every inner boundary pixel lies exactly 2
    # px from the outer boundary; the outer one's pixels too, but for 3 pixels at each corner
    # (2√2 and twice √5 from the inner corner). Boundaries: 116 + 100 pixels.
    truth, pred = _square(48, 10, 40), _square(48, 12, 38)
    hd95, assd, nsd = _scores(pred, truth, tolerance=2.0)
    assert nsd == pytest.approx((100 + 116 - 12) / 216)
    corner = 2 * math.sqrt(5) + 2 * math.sqrt(2)  # per corner: the three far pixels' distances
    assert assd == pytest.approx((216 * 2 - 12 * 2 + 4 * corner) / 216, rel=1e-6)
    # 12 of the outer boundary's 116 pixels (over 5 %) lie farther than 2 px: the 95th
    # percentile (linear, at rank 109.25 of 0..115) falls among the eight at √5.
    assert hd95 == pytest.approx(math.sqrt(5))
    assert (hd95, assd, nsd) == pytest.approx(_scipy_reference(pred, truth, 2.0), rel=1e-6)
    # Shifted by 3 px, the same square: HD95 3 px; NSD 0 at a 2-px tolerance, 1 at 3 px.
    shifted = np.roll(truth, 3, axis=1)
    hd95, _, nsd = _scores(shifted, truth, tolerance=2.0)
    assert hd95 == pytest.approx(3.0) and _scores(shifted, truth, tolerance=3.0)[2] == 1.0
    assert nsd == pytest.approx(_scipy_reference(shifted, truth, 2.0)[2])


def test_identical_masks_score_perfectly():
    truth = _square(32, 5, 20)
    assert _scores(truth, truth) == (0.0, 0.0, 1.0)


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), 3)
    return noise > np.quantile(noise, 0.85)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_shapes_match_scipy_and_monai(seed):
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    rng = np.random.default_rng(seed)
    truth = np.stack([_blobs(rng, 40) for _ in range(4)])
    pred = np.stack([_blobs(rng, 40) | np.roll(t, 2, axis=0) for t in truth])
    truth[0, :6, :] = True  # a shape touching the image border: its edge there counts
    out = surface_scores(torch.from_numpy(pred), torch.from_numpy(truth), 1.5)
    for i in range(len(truth)):
        reference = _scipy_reference(pred[i], truth[i], 1.5)
        got = (out["hd95"][i].item(), out["assd"][i].item(), out["nsd"][i].item())
        assert got == pytest.approx(reference, rel=1e-5), i
    p, t = torch.from_numpy(pred[:, None]).float(), torch.from_numpy(truth[:, None]).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(p, t, include_background=True, percentile=95)
        asd = compute_average_surface_distance(p, t, include_background=True, symmetric=True)
        nsd = compute_surface_dice(p, t, [1.5], include_background=True)
    assert torch.allclose(out["hd95"], hd[:, 0], rtol=1e-5)
    assert torch.allclose(out["assd"], asd[:, 0], rtol=1e-5)
    assert torch.allclose(out["nsd"], nsd[:, 0], rtol=1e-5)


def test_empty_cases_follow_the_documented_rules_and_never_give_nan():
    empty, tumor = np.zeros((24, 32), dtype=bool), _square(24, 4, 12)[:, :24]
    tumor = np.pad(tumor, ((0, 0), (0, 8)))
    worst = worst_distance(24, 32)
    assert worst == pytest.approx(math.hypot(23, 31))
    assert _scores(empty, empty) == (0.0, 0.0, 1.0)  # both empty: nothing to find or claim
    assert _scores(empty, tumor) == pytest.approx((worst, worst, 0.0))  # tumor missed
    assert _scores(tumor, empty) == pytest.approx((worst, worst, 0.0))  # tumor-free slice
    out = surface_scores(torch.zeros(3, 8, 8, dtype=torch.bool), torch.ones(3, 8, 8).bool())
    assert all(torch.isfinite(v).all() for v in out.values())


def test_a_negative_tolerance_is_refused_with_its_value():
    with pytest.raises(ValueError, match="-1"):
        surface_scores(torch.zeros(1, 4, 4).bool(), torch.zeros(1, 4, 4).bool(), -1.0)
