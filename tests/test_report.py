from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainseg.metrics import registry
from brainseg.report import build_report, load_sweep
from brainseg.report.__main__ import main
from brainseg.report.collect import expected_jobs
from brainseg.report.stats import bootstrap_ratio, paired_stats

from .fake_sweep import BASE_DICE, make_sweep
from .smoke_sweep import smoke_sweep_dir

FIGURES = ("learning_curves.png", "dice_distribution.png", "dice_vs_ms.png")
QUALITATIVE = tuple(f"qualitative_{r}.png" for r in ("best", "median", "worst"))


def _job_records(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]


def test_report_writes_every_file(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    written = build_report(sweep, wandb=False)
    for name in ("table.md", "table.csv", "stats.md", "stats.csv", *FIGURES):
        assert (sweep / "report" / name).stat().st_size > 0, name
        assert written[name] == sweep / "report" / name
    # Fake runs have no checkpoints: the grids are skipped, the rest of the report is not.
    assert not any((sweep / "report" / name).exists() for name in QUALITATIVE)


def test_table_equals_a_recomputation_from_the_run_records(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1, 2))
    build_report(sweep, wandb=False, qualitative=False)
    table = pd.read_csv(sweep / "report" / "table.csv", index_col="metric")
    records = _job_records(sweep)
    for model in ("unet", "fpn"):
        for metric in ("dice", "precision", "recall", "lesion_recall", "inference_ms"):
            values = [r["test"][metric] for r in records if r["model"] == model]
            assert table.loc[metric, f"{model}_mean"] == pytest.approx(np.mean(values))
            assert table.loc[metric, f"{model}_std"] == pytest.approx(np.std(values, ddof=1))
            assert table.loc[metric, f"{model}_n"] == 3
        per_image = [
            pd.read_csv(p)["dice"].mean()
            for p in sorted(sweep.glob("*/per_image.csv"))
            if json.loads((p.parent / "metrics.json").read_text())["model"] == model
        ]
        assert table.loc["dice", f"{model}_mean"] == pytest.approx(np.mean(per_image))
    assert table.loc["dice", "study_unet_mean"] == pytest.approx(0.8427)
    assert table.loc["inference_ms", "study_fpn_std"] == pytest.approx(1.300)
    text = (sweep / "report" / "table.md").read_text()
    mean, std = table.loc["dice", "fpn_mean"], table.loc["dice", "fpn_std"]
    assert f"{mean:.4f} ± {std:.4f}" in text
    assert "fpn (n=3)" in text and "0.8613 ± 0.0025" in text


def test_no_reference_leaves_the_study_out(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    build_report(sweep, study=False, wandb=False, qualitative=False)
    table = pd.read_csv(sweep / "report" / "table.csv")
    assert not [c for c in table.columns if c.startswith("study_")]
    assert "0.8427" not in (sweep / "report" / "table.md").read_text()


def test_missing_and_failed_jobs_are_flagged_not_averaged(tmp_path):
    sweep = make_sweep(
        tmp_path / "sweep", seeds=(0, 1, 2), missing=[("fpn", 1)], failed=[("unet", 0)]
    )
    build_report(sweep, wandb=False, qualitative=False)
    text = (sweep / "report" / "table.md").read_text()
    assert "Incomplete sweep: 2 of 6 jobs" in text
    assert "MISSING: fpn seed=1" in text
    assert "FAILED: unet seed=0 (0/): RuntimeError: boom" in text
    assert "unet (n=2)" in text and "fpn (n=2)" in text
    table = pd.read_csv(sweep / "report" / "table.csv", index_col="metric")
    ok = [r["test"]["dice"] for r in _job_records(sweep) if r["model"] == "unet"]
    assert len(ok) == 2 and table.loc["dice", "unet_mean"] == pytest.approx(np.mean(ok))


def test_cli_prints_where_the_report_went(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep", missing=[("unet", 1)])
    assert main([str(sweep), "--no-wandb", "--no-qualitative", "--resamples", "200"]) == 0
    out, err = capsys.readouterr()
    assert str(sweep / "report" / "stats.md") in out
    assert "1 job(s) missing, failed or incomplete" in err
    assert main([str(tmp_path / "nowhere")]) == 2


def test_expected_jobs_follow_hydras_sweep_order():
    keys, jobs = expected_jobs(["experiment=smoke", "model=unet,fpn", "seed=range(3)"])
    assert keys == ["model", "seed"]
    assert jobs[:2] == [{"model": "unet", "seed": "0"}, {"model": "unet", "seed": "1"}]
    assert len(jobs) == 6 and jobs[-1] == {"model": "fpn", "seed": "2"}
    keys, jobs = expected_jobs(["model=unet,fpn", "data.fold=range(1,6)"])
    assert keys == ["model", "data.fold"] and len(jobs) == 10


def test_identical_models_differ_by_nothing(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", dice=lambda m, s, i, p: 0.5 + 0.4 * np.sin(i + s))
    build_report(sweep, wandb=False, qualitative=False, n_resamples=500)
    stats = pd.read_csv(sweep / "report" / "stats.csv")
    sizes = {"small (≤ 80 px)", "medium (80–120 px)", "large (> 120 px)"}
    assert set(stats["subset"]) == {"all", "meningioma", "glioma", "pituitary", *sizes}
    for row in stats.itertuples():
        assert row.diff == pytest.approx(0.0, abs=1e-12)
        assert row.ci_low <= 0.0 <= row.ci_high
    dice = stats[(stats["metric"] == "dice") & (stats["subset"] == "all")].iloc[0]
    assert dice["wilcoxon_p"] == 1.0 and dice["unit"] == "patient"


def test_a_uniformly_better_model_wins_by_its_margin(tmp_path):
    def dice(model, seed, image, patient):
        base = 0.5 + 0.3 * np.sin(3 * image + seed)
        return base + (0.1 if model == "fpn" else 0.0)

    sweep = make_sweep(tmp_path / "sweep", dice=dice, n_images=40)
    stats = paired_stats(_means(sweep), n_resamples=500)
    row = stats[(stats["metric"] == "dice") & (stats["subset"] == "all")].iloc[0]
    assert (row["model_a"], row["model_b"]) == ("unet", "fpn")
    assert row["diff"] == pytest.approx(0.1)
    assert row["ci_low"] > 0 and row["ci_low"] == pytest.approx(0.1)
    assert row["wilcoxon_p"] < 0.001
    assert row["mean_b"] - row["mean_a"] == pytest.approx(0.1)


def _means(sweep: Path) -> dict[str, pd.DataFrame]:
    from brainseg.report import per_image_means

    return per_image_means(load_sweep(sweep))


def test_bootstrap_resamples_patients_not_slices():
    # 8 patients x 25 slices; slices of a patient share its value: 8 independent units, not 200.
    rng = np.random.default_rng(1)
    patient_effect = rng.normal(0, 1, 8)
    values = np.repeat(patient_effect, 25) + rng.normal(0, 0.05, 200)
    pids = np.repeat(np.arange(8), 25)
    ones = np.ones(200)
    est_p, low_p, high_p = bootstrap_ratio(values, ones, pids, n_resamples=2000, seed=0)
    est_i, low_i, high_i = bootstrap_ratio(values, ones, None, n_resamples=2000, seed=0)
    assert est_p == pytest.approx(values.mean()) and est_i == pytest.approx(values.mean())
    assert (high_p - low_p) > 3 * (high_i - low_i)
    # The clustered interval matches the spread of patient means, as it should.
    se = patient_effect.std(ddof=1) / np.sqrt(8)
    assert (high_p - low_p) == pytest.approx(2 * 1.96 * se, rel=0.35)


def test_bootstrap_is_reproducible_and_a_ratio():
    num, den = np.array([1.0, 0.0, 2.0]), np.array([1.0, 1.0, 2.0])
    assert bootstrap_ratio(num, den, seed=3) == bootstrap_ratio(num, den, seed=3)
    assert bootstrap_ratio(num, den)[0] == pytest.approx(3 / 4)


def test_without_patient_ids_slices_are_the_unit(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", with_pids=False)
    stats = paired_stats(_means(sweep), n_resamples=200)
    assert set(stats["unit"]) == {"image"}
    assert (stats["n_clusters"] == stats["n_images"]).all()


def test_learning_curves_join_the_sparse_lightning_rows(tmp_path):
    sweep = load_sweep(make_sweep(tmp_path / "sweep", epochs=4))
    history = sweep.ok[0].history
    assert len(history) == 4
    assert history[["val/dice", "train/loss_epoch"]].notna().all().all()
    assert history["val/dice"].iloc[-1] == pytest.approx(BASE_DICE["unet"])


def test_wandb_report_lands_in_the_sweeps_group(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = make_sweep(tmp_path / "sweep", wandb=True)
    assert load_sweep(sweep).group == str(sweep).replace("/", "_")
    written = build_report(sweep, qualitative=False, n_resamples=100)
    run_dir = written["wandb"]
    assert run_dir.is_dir() and (sweep / "report") in run_dir.parents
    assert not (tmp_path / "wandb").exists()


@pytest.mark.slow
def test_report_on_a_real_smoke_sweep(tmp_path_factory):
    sweep = smoke_sweep_dir(tmp_path_factory)
    written = build_report(sweep, wandb=False, n_resamples=500)
    for name in ("table.md", "table.csv", "stats.md", "stats.csv", *FIGURES, *QUALITATIVE):
        assert written[name].stat().st_size > 0, name
    table = pd.read_csv(sweep / "report" / "table.csv", index_col="metric")
    records = _job_records(sweep)
    assert len(records) == 4
    for model in ("unet", "fpn"):
        mine = [r for r in records if r["model"] == model]
        per_image = [
            pd.read_csv(Path(sweep, str(i), "per_image.csv"))["dice"].mean()
            for i, r in enumerate(records)
            if r["model"] == model
        ]
        assert table.loc["dice", f"{model}_n"] == 2
        assert table.loc["dice", f"{model}_mean"] == pytest.approx(
            np.mean([r["test"]["dice"] for r in mine])
        )
        assert table.loc["dice", f"{model}_mean"] == pytest.approx(np.mean(per_image), abs=1e-4)
    assert "Incomplete" not in (sweep / "report" / "table.md").read_text()


def test_cross_validation_folds_are_aggregated_like_seeds(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", seeds=(0,), folds=(1, 2, 3), n_images=12,
                       n_patients=4, missing=[("fpn", 0, 3)])  # fmt: skip
    runs = load_sweep(sweep).runs
    assert {(r.model, r.seed, r.fold) for r in runs if r.status == "ok"} == {
        ("unet", 0, 1), ("unet", 0, 2), ("unet", 0, 3), ("fpn", 0, 1), ("fpn", 0, 2)
    }  # fmt: skip
    build_report(sweep, wandb=False, qualitative=False, n_resamples=200)
    table = pd.read_csv(sweep / "report" / "table.csv", index_col="metric")
    assert table.loc["dice", "unet_n"] == 3 and table.loc["dice", "fpn_n"] == 2
    assert "MISSING: fpn seed=0 fold=3" in (sweep / "report" / "table.md").read_text()
    stats = pd.read_csv(sweep / "report" / "stats.csv")
    overall = stats[(stats["subset"] == "all") & (stats["metric"] == "dice")].iloc[0]
    # Each fold tests its own slices: the pairs are the union over the folds both models ran.
    assert overall["n_images"] == 24 and overall["n_clusters"] == 8


# ---------------------------------------------------------------- only complete jobs count


def _report(sweep: Path, *args: str) -> tuple[str, str, pd.DataFrame]:
    """Runs the CLI; returns table.md, stats.md and table.csv."""
    assert main([str(sweep), "--no-wandb", "--no-qualitative", "--resamples", "100", *args]) == 0
    out = sweep / "report"
    table = pd.read_csv(out / "table.csv", index_col="metric")
    return (out / "table.md").read_text(), (out / "stats.md").read_text(), table


def _printed_ns(table_md: str, stats_md: str) -> dict[str, set[int]]:
    """Every n the report prints per model: table headers and the stats' run counts."""
    ns: dict[str, set[int]] = {}
    for model, n in re.findall(r"\| (unet|fpn) \(n=(\d+)\)", table_md):
        ns.setdefault(model, set()).add(int(n))
    for model, n in re.findall(r"(unet|fpn): (\d+) runs?", stats_md):
        ns.setdefault(model, set()).add(int(n))
    return ns


def test_a_job_without_per_image_csv_is_listed_and_left_out_everywhere(tmp_path):
    # Observed: stats.md silently dropped the job and still said "fpn: 3 runs".
    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1, 2))
    (sweep / "4" / "per_image.csv").unlink()  # fpn seed=1
    table_md, stats_md, table = _report(sweep)
    assert "INCOMPLETE: fpn seed=1 (4/): per_image.csv missing" in table_md
    assert "INCOMPLETE: fpn seed=1 (4/)" in stats_md
    assert _printed_ns(table_md, stats_md) == {"unet": {3}, "fpn": {2}}
    used = [
        r["test"]["dice"] for r in _job_records(sweep) if r["model"] == "fpn" and r["seed"] != 1
    ]
    assert table.loc["dice", "fpn_n"] == 2
    assert table.loc["dice", "fpn_mean"] == pytest.approx(np.mean(used))


def test_a_truncated_file_names_itself_and_never_aborts_the_report(tmp_path):
    # Observed: one truncated metrics.json aborted the report with a bare JSON error.
    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1, 2))
    text = (sweep / "1" / "metrics.json").read_text()
    (sweep / "1" / "metrics.json").write_text(text[: len(text) // 2])
    text = (sweep / "5" / "per_image.csv").read_text()
    (sweep / "5" / "per_image.csv").write_text(text[: text.rindex(",")])  # cut in the last row
    (sweep / "3" / ".hydra" / "config.yaml").write_text("model: {name: [fpn\n")
    (sweep / "2" / "error.txt").write_text("Traceback (most recent call last):\nOSError: disk\n")
    (sweep / "2" / "metrics.json").write_text("{")  # a crash while writing: error.txt wins
    table_md, stats_md, table = _report(sweep)
    assert "Incomplete sweep: 4 of 6 jobs" in table_md
    assert "INCOMPLETE: unet seed=1 (1/): metrics.json unreadable (JSONDecodeError" in table_md
    assert "INCOMPLETE: fpn seed=2 (5/): per_image.csv has blank values on 1 row(s)" in table_md
    assert "INCOMPLETE: fpn seed=0 (3/): .hydra/config.yaml unreadable" in table_md
    assert "FAILED: unet seed=2 (2/): OSError: disk" in table_md
    assert _printed_ns(table_md, stats_md) == {"unet": {1}, "fpn": {1}}
    assert table.loc["dice", "unet_n"] == 1 and table.loc["dice", "fpn_n"] == 1


def test_debug_runs_are_listed_and_averaged_only_when_asked(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1), debug=[("unet", 0)])
    table_md, stats_md, table = _report(sweep)
    line = "DEBUG: unet seed=0 (0/): no full training (trainer.max_epochs=0)"
    assert line in table_md and "left out of the numbers below" in table_md
    assert "Incomplete sweep" not in table_md
    assert _printed_ns(table_md, stats_md) == {"unet": {1}, "fpn": {2}}
    unet = [r["test"]["dice"] for r in _job_records(sweep) if r["model"] == "unet"]
    assert table.loc["dice", "unet_mean"] == pytest.approx(unet[1])

    table_md, stats_md, table = _report(sweep, "--include-debug")
    assert line in table_md and "included (--include-debug)" in table_md
    assert _printed_ns(table_md, stats_md) == {"unet": {2}, "fpn": {2}}
    assert table.loc["dice", "unet_mean"] == pytest.approx(np.mean(unet))


def test_the_split_is_shown_and_a_mixed_split_is_a_warning(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    assert "Split: by patient." in _report(sweep)[0]
    record = json.loads((sweep / "3" / "metrics.json").read_text())
    (sweep / "3" / "metrics.json").write_text(json.dumps(record | {"split": "image"}))
    table_md = _report(sweep)[0]
    assert "Split: by patient." not in table_md
    assert "different splits (by patient: unet seed=0, unet seed=1, fpn seed=0; " in table_md
    assert "by image: fpn seed=1)" in table_md


def test_empty_slice_rows_appear_only_when_a_run_recorded_them(tmp_path):
    table = _report(make_sweep(tmp_path / "tumors"))[2]
    every_set = ("dice", "dice_pooled", "precision", "recall", "lesion_recall", "inference_ms")
    assert tuple(table.index) == every_set  # the fake runs record no boundary metric, no ECE

    sweep = make_sweep(tmp_path / "empty", seeds=(0, 1, 2), tumor_free=12)
    table_md, _, table = _report(sweep)
    empty_slice = {s.name for s in registry.specs() if s.tumor_free_only}
    assert empty_slice == {"dice_tumor", "empty_correct", "fp_lesions_per_empty"}
    assert empty_slice < set(table.index)
    for model in ("unet", "fpn"):
        frames = [
            pd.read_csv(p)
            for p in sorted(sweep.glob("*/per_image.csv"))
            if json.loads((p.parent / "metrics.json").read_text())["model"] == model
        ]
        dice_tumor = [f.loc[f["true_area"] > 0, "dice"].mean() for f in frames]
        empty_correct = [(f.loc[f["true_area"] == 0, "pred_area"] == 0).mean() for f in frames]
        assert table.loc["dice_tumor", f"{model}_mean"] == pytest.approx(np.mean(dice_tumor))
        assert table.loc["empty_correct", f"{model}_mean"] == pytest.approx(np.mean(empty_correct))
        assert table.loc["fp_lesions_per_empty", f"{model}_mean"] == pytest.approx(1.0)
    assert "| Dice (tumor slices) |" in table_md and "tumor-free slices" in table_md


def test_a_metric_fewer_runs_recorded_shows_its_own_n(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1, 2))
    record = json.loads((sweep / "0" / "metrics.json").read_text())
    del record["test"]["inference_ms"]
    (sweep / "0" / "metrics.json").write_text(json.dumps(record))
    table_md, _, table = _report(sweep)
    assert table.loc["inference_ms", "unet_n"] == 2 and table.loc["dice", "unet_n"] == 3
    row = next(line for line in table_md.splitlines() if line.startswith("| Inference"))
    assert "(n=2)" in row.split("|")[2]


def test_named_job_folders_read_as_the_numbered_ones(tmp_path):
    numbered = load_sweep(make_sweep(tmp_path / "numbered", missing=[("fpn", 1)]))
    named = load_sweep(make_sweep(tmp_path / "named", missing=[("fpn", 1)], named=True))
    assert sorted(run.job_dir.name for run in named.runs if run.job_dir) == [
        "fpn-seed0",
        "unet-seed0",
        "unet-seed1",
    ]

    def summary(sweep):
        return sorted((r.status, r.name, r.test.get("dice")) for r in sweep.runs)

    assert summary(named) == summary(numbered)
    assert [r.name for r in named.problems] == ["fpn seed=1"]  # expected, never started


@pytest.mark.parametrize(
    "status, reason",
    [
        ("no_tumor_test", "none of the 30 test slices has a tumor"),
        ("no_test", "the test set is empty (data.fractions=[0.8, 0.2, 0.0])"),
        ("interrupted", "SIGTERM during fit, epoch 1"),
    ],
)
def test_runs_that_are_no_result_are_listed_with_the_reason_never_averaged(
    tmp_path, status, reason
):
    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1, 2), named=True)
    path = sweep / "unet-seed1" / "metrics.json"
    # What brainseg.train writes for such a run; its per_image.csv stays (a tumor-free test set
    # scores Dice 1 for a network that predicts nothing), and must still be left out.
    path.write_text(json.dumps(json.loads(path.read_text()) | {"status": status, "reason": reason}))
    loaded = load_sweep(sweep)
    (run,) = [r for r in loaded.runs if r.job_dir.name == "unet-seed1"]
    assert run.status == status and run.error == reason
    assert run not in loaded.ok and run not in loaded.used and run in loaded.problems
    build_report(loaded, wandb=False, qualitative=False)
    text = (sweep / "report" / "table.md").read_text()
    assert f"{status.upper()}: unet seed=1" in text and reason in text
    assert "unet (n=2)" in text
    table = pd.read_csv(sweep / "report" / "table.csv", index_col="metric")
    records = _job_records(sweep)
    kept = [r["test"]["dice"] for r in records if r["model"] == "unet" and r["seed"] != 1]
    assert table.loc["dice", "unet_mean"] == pytest.approx(np.mean(kept))
