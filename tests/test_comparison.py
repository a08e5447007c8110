"""The report compares N variants: every pair or against a reference, Holm-corrected, ranked
with the uncertainty of the rank, with their cost and a Pareto front of quality and speed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainseg.report import build_report, load_sweep
from brainseg.report.figures import dice_vs_ms_figure, pareto_front
from brainseg.report.stats import holm, rank_variants

from .fake_sweep import make_sweep

MODELS = ("unet", "fpn", "deeplab")
LEVEL = {"unet": 0.70, "fpn": 0.80, "deeplab": 0.60}


def separated(model: str, seed: int, image: int, patient: int) -> float:
    rng = np.random.default_rng([seed, image, len(model)])
    return float(LEVEL[model] + 0.02 * rng.standard_normal())


def test_holm_matches_its_definition():
    p = np.array([0.01, 0.04, np.nan, 0.03])
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    np.testing.assert_allclose(holm(p), [0.03, 0.06, np.nan, 0.06])
    np.testing.assert_allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])
    assert holm(np.array([0.6]))[0] == 0.6


def test_ranking_puts_the_clearly_best_first_with_a_tight_rank(tmp_path):
    sweep = load_sweep(make_sweep(tmp_path / "s", models=MODELS, dice=separated, n_images=40))
    from brainseg.report import per_image_means

    ranking = rank_variants(per_image_means(sweep), n_resamples=300)
    assert list(ranking["variant"]) == ["fpn", "unet", "deeplab"]
    assert list(ranking["rank"]) == [1, 2, 3]
    assert ranking.loc[0, "p_best"] == 1.0 and ranking.loc[0, "rank_high"] == 1
    # Two variants that are the same up to noise share the first place in some resamples.
    close = {"a": 0.7, "b": 0.7}
    frames = {
        v: pd.DataFrame(
            {
                "id": [str(i) for i in range(60)],
                "pid": [f"P{i % 12}" for i in range(60)],
                "dice": close[v] + 0.05 * np.random.default_rng([i, k]).standard_normal(60),
            }
        )
        for k, (i, v) in enumerate(enumerate(close))
    }
    tied = rank_variants(frames, n_resamples=400)
    assert tied["p_best"].min() > 0.05 and tied["rank_low"].min() == 1
    assert tied["rank_high"].max() == 2


def test_a_three_variant_report_pairs_all_or_against_a_reference(tmp_path):
    root = make_sweep(tmp_path / "s", models=MODELS, dice=separated)
    written = build_report(root, wandb=False, qualitative=False, n_resamples=200)
    stats = pd.read_csv(written["stats.csv"])
    dice = stats[(stats.metric == "dice") & (stats.subset == "all")]
    assert len(dice) == 3  # every pair
    assert (dice["wilcoxon_p_holm"] >= dice["wilcoxon_p"]).all()
    ranking = pd.read_csv(written["ranking.csv"])
    assert ranking["variant"].iloc[0] == "fpn"
    assert "## Ranking by Dice" in written["stats.md"].read_text()
    table = written["table.md"].read_text()
    assert "## Cost" in table and "| deeplab |" in table

    written = build_report(root, wandb=False, qualitative=False, n_resamples=200, reference="unet")
    stats = pd.read_csv(written["stats.csv"])
    pairs = set(map(tuple, stats[["model_a", "model_b"]].drop_duplicates().to_numpy()))
    assert pairs == {("unet", "fpn"), ("unet", "deeplab")}
    with pytest.raises(ValueError, match="--reference 'vit' is not a variant"):
        build_report(root, wandb=False, qualitative=False, reference="vit")


def test_the_pareto_front_holds_the_variants_nothing_beats_on_both(tmp_path):
    points = {"fast": (1.0, 0.6), "slow_good": (9.0, 0.9), "dominated": (5.0, 0.5), "mid": (3, 0.8)}
    assert pareto_front(points) == ["fast", "mid", "slow_good"]
    sweep = load_sweep(make_sweep(tmp_path / "s", models=MODELS, dice=separated))
    fig = dice_vs_ms_figure(sweep)
    lines = [line for line in fig.axes[0].get_lines() if line.get_gid() == "pareto"]
    assert len(lines) == 1
    # BASE_MS: unet 5, fpn 11, deeplab 8 ms; fpn is best, unet fastest, deeplab dominated by unet.
    assert len(lines[0].get_xdata()) == 2
