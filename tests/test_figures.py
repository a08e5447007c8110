"""The report's figures read back from their matplotlib Figures: colours, summaries, axes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matplotlib.collections import Collection
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D

import brainseg.inference
from brainseg.data.sources import LABEL_NAMES
from brainseg.report import per_image_means, qualitative
from brainseg.report.collect import Run, load_sweep
from brainseg.report.figures import (
    dice_distribution_figure,
    dice_vs_ms_figure,
    learning_curves_figure,
    model_colors,
)
from brainseg.report.qualitative import (
    OUTCOME_COLORS,
    grid_figure,
    outcome_overlay,
    predict_mask,
    qualitative_grids,
    run_threshold,
)
from brainseg.report.table import load_study_table

from .fake_sweep import BASE_DICE, make_sweep
from .smoke_sweep import untrained_checkpoint

MODELS = ("unet", "fpn", "segformer")


def _colors_by_gid(fig) -> dict[str, set[tuple]]:
    """{gid: the RGB colours of every artist named so} over the whole figure."""
    found: dict[str, set[tuple]] = {}
    for artist in fig.findobj(lambda a: a.get_gid() is not None):
        if isinstance(artist, Line2D):
            rgb = to_rgb(artist.get_color())
        elif isinstance(artist, Collection):
            face = artist.get_facecolor()
            rgb = tuple(face[0][:3]) if len(face) else tuple(artist.get_edgecolor()[0][:3])
        else:
            continue
        found.setdefault(artist.get_gid(), set()).add(tuple(np.round(rgb, 6)))
    return found


def _set_inference_ms(sweep: Path, times: dict[str, float]) -> None:
    for name, ms in times.items():
        record = json.loads((sweep / name / "metrics.json").read_text())
        record["test"]["inference_ms"] = ms
        (sweep / name / "metrics.json").write_text(json.dumps(record))


def test_model_colors_are_fixed_for_the_study_models_and_sorted_for_the_rest():
    one, other = model_colors(["unet", "fpn", "b", "a"]), model_colors(["a", "fpn", "b"])
    assert model_colors(["unet"])["unet"] == one["unet"] != one["fpn"] == other["fpn"]
    assert other["a"] == one["a"] != one["b"] == other["b"]
    assert len(set(one.values())) == 4


def test_each_model_has_one_colour_in_every_figure(tmp_path):
    sweep = load_sweep(make_sweep(tmp_path / "sweep", models=MODELS, seeds=(0, 1, 2)))
    figures = {
        "learning_curves": learning_curves_figure(sweep),
        "dice_distribution": dice_distribution_figure(per_image_means(sweep)),
        "dice_vs_ms": dice_vs_ms_figure(sweep, load_study_table()),
    }
    expected = {m: {tuple(np.round(to_rgb(c), 6))} for m, c in model_colors(MODELS).items()}
    assert len({next(iter(c)) for c in expected.values()}) == len(MODELS)
    for name, fig in figures.items():
        found = _colors_by_gid(fig)
        assert {m: found[m] for m in MODELS} == expected, name
    # The study's hollow marks take the colour of the same model here.
    study = _colors_by_gid(figures["dice_vs_ms"])
    assert study["study unet"] == expected["unet"] and study["study fpn"] == expected["fpn"]


def test_learning_curves_draw_the_median_and_every_run(tmp_path):
    sweep = load_sweep(make_sweep(tmp_path / "sweep", seeds=(0, 1, 5), epochs=4))
    ax = learning_curves_figure(sweep).axes[0]
    unet = [line for line in ax.get_lines() if line.get_gid() == "unet"]
    median = [line for line in unet if line.get_label().startswith("unet (n=3)")]
    assert len(unet) == 4 and len(median) == 1
    # Fake validation Dice is base * epoch / epochs + 0.01 * seed: the median is seed 1's.
    expected = BASE_DICE["unet"] * np.arange(1, 5) / 4 + 0.01
    np.testing.assert_allclose(median[0].get_ydata(), expected)


@pytest.mark.parametrize("outlier_ms", [9.0, 50_000.0])
def test_the_time_axis_stays_positive_with_an_outlier_run(tmp_path, outlier_ms):
    # Observed: mean - std of the times of 4 fast runs and one slow one fell below 0 ms.
    sweep_dir = make_sweep(tmp_path / "sweep", seeds=(0, 1, 2, 3, 4))
    times = {"0": 1.0, "1": 1.0, "2": 1.2, "3": 1.1, "4": outlier_ms}  # the unet jobs
    _set_inference_ms(sweep_dir, times | {str(job): 2.0 for job in range(5, 10)})  # fpn
    ax = dice_vs_ms_figure(load_sweep(sweep_dir)).axes[0]
    low, high = ax.get_xlim()
    assert 0 < low < 1.0 and high > outlier_ms
    assert ax.get_xscale() == ("log" if outlier_ms > 1000 else "linear")
    bars = next(c for c in ax.containers if c.get_label().startswith("unet:"))
    assert bars.lines[0].get_xdata()[0] == pytest.approx(1.1)  # the median, not the mean
    segment = bars.lines[2][0].get_segments()[0]  # the time bar: first to third quartile
    np.testing.assert_allclose(sorted(segment[:, 0]), np.percentile(list(times.values()), [25, 75]))


def test_dice_distribution_labels_each_model_with_its_median(tmp_path):
    per_image = per_image_means(load_sweep(make_sweep(tmp_path / "sweep")))
    ax = dice_distribution_figure(per_image).axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    for label, model in zip(labels, ("unet", "fpn"), strict=True):
        dice = per_image[model]["dice"]
        assert label.startswith(f"{model} (n={len(dice)})")
        assert f"median {dice.median():.3f}" in label


# ---------------------------------------------------------------- qualitative grids


def _hand_made_case() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((4, 5), dtype=bool)
    pred = np.zeros((4, 5), dtype=bool)
    truth[1:3, 1:3] = True  # 4 tumor pixels
    pred[1:3, 2:4] = True  # 2 of them found, 2 claimed outside
    return truth, pred


def test_outcome_colours_land_on_exactly_the_expected_pixels():
    truth, pred = _hand_made_case()
    overlay = outcome_overlay(truth, pred)
    tp, fp, fn = OUTCOME_COLORS.values()
    expected = {
        tp: [(1, 2), (2, 2)],
        fp: [(1, 3), (2, 3)],
        fn: [(1, 1), (2, 1)],
    }
    painted = overlay[..., 3] > 0
    assert painted.sum() == 6
    for color, pixels in expected.items():
        where = np.all(np.isclose(overlay[..., :3], to_rgb(color)), axis=-1) & painted
        assert sorted(zip(*np.nonzero(where), strict=True)) == pixels, color
    assert len({to_rgb(c) for c in OUTCOME_COLORS.values()}) == 3


def test_grid_tiles_name_slice_tumor_type_patient_and_dice():
    truth, pred = _hand_made_case()
    image = np.full(truth.shape, 100, dtype=np.uint8)
    shown = {"image": image, "mask": truth, "pred": pred, "pid": "P7", "label": 2}
    slices = {
        "unet": {"12": shown | {"dice": 0.5, "run": "unet seed=0"}},
        "fpn": {"12": shown | {"pred": truth, "dice": 1.0, "run": "fpn seed=0"}},
    }
    fig = grid_figure("best", ["12"], slices)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 3
    for title in titles:
        assert "slice 12" in title and LABEL_NAMES[2] in title and "patient P7" in title
    assert "unet: Dice 0.500" in titles[1] and "fpn: Dice 1.000" in titles[2]
    np.testing.assert_array_equal(
        fig.axes[1].get_images()[1].get_array(), outcome_overlay(truth, pred)
    )
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == list(OUTCOME_COLORS)


def test_the_threshold_is_the_runs_own():
    run = Run(job_dir=Path("job"), status="ok", model="unet", seed=0, fold=None, variant="unet")
    with pytest.raises(KeyError, match="metrics.threshold"):
        run_threshold(run)
    assert run_threshold(run, {"metrics": {"threshold": 0.7}}) == 0.7
    run.config = {"metrics": {"threshold": 0.3}}
    assert run_threshold(run, {"metrics": {"threshold": 0.7}}) == 0.3
    probs = torch.tensor([[0.2, 0.3], [0.4, 0.9]], dtype=torch.float64)  # 0.3: at the threshold
    logits = torch.logit(probs)[None, None]
    mask = predict_mask(lambda x: logits, torch.zeros(1, 2, 2), threshold=0.3)
    np.testing.assert_array_equal(mask, [[False, False], [True, True]])  # strictly above


def test_grids_from_checkpoints_name_the_data_and_use_the_runs_threshold(tmp_path, monkeypatch):
    sweep_dir = make_sweep(tmp_path / "sweep", seeds=(0,), epochs=1)
    data_dir = f"paths.data_dir={tmp_path / 'data'}"
    for job, model in (("0", "unet"), ("1", "fpn")):
        untrained_checkpoint(sweep_dir / job / "checkpoints" / "best.ckpt", model, data_dir)
        config_path = sweep_dir / job / ".hydra" / "config.yaml"
        config = yaml.safe_load(config_path.read_text()) | {"metrics": {"threshold": 0.3}}
        config_path.write_text(yaml.safe_dump(config))
    test_set = _smoke_test_set(data_dir)
    for job in ("0", "1"):  # the fake per-image rows, on the slices the checkpoint's data tests
        frame = pd.read_csv(sweep_dir / job / "per_image.csv").iloc[: len(test_set)]
        frame = frame.assign(id=test_set["id"], pid=test_set["pid"], label=test_set["label"])
        frame.to_csv(sweep_dir / job / "per_image.csv", index=False)
    thresholds, figures = [], []
    to_masks = brainseg.inference.logits_to_masks
    monkeypatch.setattr(
        brainseg.inference, "logits_to_masks", lambda p, t: thresholds.append(t) or to_masks(p, t)
    )
    save = qualitative.save
    monkeypatch.setattr(
        qualitative, "save", lambda fig, path: figures.append(fig) or save(fig, path)
    )
    sweep = load_sweep(sweep_dir)
    paths = qualitative_grids(sweep, per_image_means(sweep), tmp_path, k=2)
    assert [p.name for p in paths] == [f"qualitative_{r}.png" for r in ("best", "median", "worst")]
    assert thresholds and set(thresholds) == {0.3}
    by_id = test_set.set_index("id")
    for fig in figures:
        for ax in fig.axes:
            sample_id = ax.get_title().split(" · ")[0].removeprefix("slice ")
            row = by_id.loc[sample_id]
            assert f"{LABEL_NAMES[int(row['label'])]} · patient {row['pid']}" in ax.get_title()


def _smoke_test_set(*overrides: str) -> pd.DataFrame:
    from hydra.utils import instantiate

    from .conftest import compose_config

    datamodule = instantiate(compose_config(["experiment=smoke", *overrides]).data)
    datamodule.prepare_data()
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    return pd.DataFrame({"id": test.ids, "pid": test.pids, "label": test.labels})
