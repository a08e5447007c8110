"""One declaration per metric: a metric registered here, in the test, reaches every output; and
each metric's value from per-image rows (the report's) equals its logged value (the module's)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from brainseg.metrics import registry
from brainseg.metrics.registry import Mean, MetricSpec, registered
from brainseg.report import build_report, load_sweep
from brainseg.tracking.dashboard import write_dashboard
from brainseg.tracking.run import finish_wandb
from brainseg.train import train

from .fake_sweep import make_sweep
from .test_metrics import _batches
from .test_wandb import offline_runs


def share_predicted(pred: torch.Tensor, truth: torch.Tensor, **_) -> dict[str, torch.Tensor]:
    """The share of an image's pixels predicted tumor."""
    return {"share_predicted": pred.flatten(1).float().mean(1)}


SHARE = MetricSpec(
    "share_predicted",
    "Predicted share",
    higher_is_better=False,
    kind="per_image",
    empty="0 when nothing is predicted",
    value=Mean("share_predicted"),
)


def test_a_registered_metric_reaches_the_run_records_the_logs_and_wandb(smoke_cfg):
    cfg = smoke_cfg("logger=wandb", "model=unet")
    with registered(SHARE, columns=share_predicted):
        record = train(cfg)
        finish_wandb()
    out = Path(cfg.paths.output_dir)
    rows = pd.read_csv(out / "per_image.csv")
    assert "share_predicted" in rows  # per_image.csv
    expected = rows["pred_area"].mean() / 64**2  # smoke images are 64 x 64
    assert record["test"]["share_predicted"] == pytest.approx(expected)  # metrics.json
    assert json.loads((out / "metrics.json").read_text())["test"]["share_predicted"] == (
        pytest.approx(expected)
    )
    log = pd.read_csv(out / "csv" / "metrics.csv")  # the logged metrics
    assert log["test/share_predicted"].dropna().tolist() == [pytest.approx(expected)]
    (run,) = offline_runs(out)  # the W&B summary
    assert run.summary["test/share_predicted"] == pytest.approx(expected)
    assert "share_predicted" not in registry.METRICS  # gone again after the block


def test_a_registered_metric_reaches_the_report_and_the_dashboard(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1, 2), wandb=True)
    shares = {}
    for path in sorted(sweep.glob("*/per_image.csv")):
        frame = pd.read_csv(path)
        frame["share_predicted"] = np.linspace(0.01, 0.05, len(frame)) * (1 + frame["dice"])
        frame.to_csv(path, index=False)
        record = json.loads((path.parent / "metrics.json").read_text())
        record["test"]["share_predicted"] = shares[path] = float(frame["share_predicted"].mean())
        (path.parent / "metrics.json").write_text(json.dumps(record))
    with registered(SHARE, columns=share_predicted):
        build_report(sweep, qualitative=False, n_resamples=50)
        loaded = load_sweep(sweep)
        dashboard = write_dashboard(loaded, loaded.report_dir, publish=False)
    report = sweep / "report"
    table = pd.read_csv(report / "table.csv", index_col="metric")
    unet = [v for p, v in shares.items() if "unet" in (p.parent / "metrics.json").read_text()]
    assert table.loc["share_predicted", "label"] == "Predicted share"
    assert table.loc["share_predicted", "unet_mean"] == pytest.approx(np.mean(unet))
    assert "| Predicted share |" in (report / "table.md").read_text()
    stats = pd.read_csv(report / "stats.csv")
    mine = stats[stats["metric"] == "share_predicted"]
    assert set(mine["stratum"]) == {"all", "tumor type", "tumor size"}
    assert mine["wilcoxon_p"].notna().all()  # a per-image mean: tested slice by slice
    assert "Predicted share" in (report / "stats.md").read_text()
    strata = pd.read_csv(report / "strata.csv")
    assert len(strata[strata["metric"] == "share_predicted"]) == 2 * 7  # variants x subsets
    assert "| Predicted share |" in (report / "strata.md").read_text()
    assert "test/share_predicted" in dashboard["definition"].read_text()
    (run,) = offline_runs(report)
    assert run.history_types("report/strata") == ["table-file"]
    assert "share_predicted" not in registry.METRICS


def test_every_value_from_rows_equals_the_logged_metric():
    # The report recomputes metrics from per_image.csv; the module logs torchmetrics' values.
    batches = _batches(seed=3, n_batches=3, batch=6)
    batches[1][1][:3] = 0.0  # tumor-free slices: the empty-slice metrics are defined
    args = {"threshold": 0.4, "connectivity": 4, "min_overlap": 0.2, "method": "scipy"}
    logged = registry.build_metrics(**args)
    empty_args = {k: v for k, v in args.items() if k != "min_overlap"}
    logged_empty = registry.build_empty_slice_metrics(**empty_args)
    columns: dict[str, list] = {}
    for logits, target in batches:
        logged.update(logits, target)
        logged_empty.update(logits, target)
        for key, value in registry.compute_columns(logits, target, args).items():
            columns.setdefault(key, []).extend(value.tolist())
    values = {**logged.compute(), **logged_empty.compute()}
    rows = {key: np.array(value) for key, value in columns.items()}
    checked = []
    for spec in registry.specs():
        if spec.build is not None and spec.value is not None:
            assert registry.value_of(spec, rows) == pytest.approx(values[spec.name].item()), spec
            checked.append(spec.name)
    assert {"dice", "dice_pooled", "precision", "recall", "lesion_recall"} < set(checked)
    assert {"dice_tumor", "empty_correct", "fp_lesions_per_empty"} < set(checked)


def test_registering_checks_names_and_columns():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("dice"))
    with pytest.raises(ValueError, match=r"\['share_predicted'\].*columns="):
        registry.register(SHARE)  # no function computes its column
    with pytest.raises(ValueError, match="neither `build`"):
        MetricSpec("x", "X", True, "per_image", "-")
    with pytest.raises(ValueError, match="kind must be one of"):
        MetricSpec("x", "X", True, "per_voxel", "-", value=Mean("dice"))
    with pytest.raises(KeyError, match="registered: dice"):
        registry.get("nope")
    assert "share_predicted" not in registry.METRICS


def test_every_declaration_is_complete():
    for spec in registry.specs():
        assert spec.label and spec.empty and spec.low < spec.high, spec.name
        if spec.value is not None:
            assert set(spec.value.columns) <= set(registry.per_image_columns()), spec.name
    # The headline metrics and the boundary metrics are in per_image.csv.
    assert {"dice", "hd95", "assd", "nsd", "tp"} <= set(registry.per_image_columns())
