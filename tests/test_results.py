"""The committed results stay true: an archived sweep rebuilds the report it was committed with,
and the README's headline numbers are that report's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from brainseg.report import build_report
from brainseg.report.collect import load_sweep, load_sweeps
from brainseg.report.figures import learning_curves_figure

from .conftest import REPO_ROOT, load_benchmark
from .smoke_sweep import smoke_sweep_dir

RESULTS = REPO_ROOT / "docs" / "results"
# The cpu preset sweep behind the README's result and docs/results.md.
CPU_SWEEP = RESULTS / "cpu-24"
# The same sweep cut to 6 epochs, and its float32 runs: the bf16 check of docs/results.md.
CPU_6_EPOCHS = RESULTS / "cpu-bf16"
# Four networks of the zoo, 8 epochs of the cpu preset: the zoo comparison of docs/results.md.
ZOO_SWEEP = RESULTS / "zoo-cpu-8"


def rebuilt_report(archive: Path, tmp_path: Path) -> Path:
    """The report `brainseg-report` writes from the archive's runs alone, in a copy."""
    copy = tmp_path / "rebuilt" / archive.name
    shutil.copytree(archive, copy, ignore=shutil.ignore_patterns("report"))
    build_report(copy, wandb=False, qualitative=False)
    return copy / "report"


def test_an_archived_sweep_keeps_its_records_but_no_checkpoints_or_machine_paths(
    tmp_path_factory, tmp_path
):
    sweep = smoke_sweep_dir(tmp_path_factory)
    build_report(sweep, wandb=False, qualitative=False)
    dest = tmp_path / "archive"
    files = load_benchmark("archive_sweep").archive(sweep, dest)

    names = {f.relative_to(dest).as_posix() for f in files}
    for job in ("unet-seed0", "unet-seed1", "fpn-seed0", "fpn-seed1"):
        assert {f"{job}/metrics.json", f"{job}/per_image.csv", f"{job}/csv/metrics.csv"} <= names
        assert f"{job}/.hydra/config.yaml" in names
        metrics = json.loads((dest / job / "metrics.json").read_text())
        assert metrics["best_checkpoint"] == "checkpoints/best.ckpt"
    assert not [n for n in names if n.endswith(".ckpt")]
    assert "report/table.csv" in names and "multirun.yaml" in names
    for f in files:  # the sweep's own folder, a path of the machine that ran it, is nowhere
        if f.suffix in (".json", ".yaml", ".csv", ".md"):
            assert str(sweep.resolve()) not in f.read_text(), f

    # The archive alone gives the same table and statistics as the sweep it came from.
    rebuilt = rebuilt_report(dest, tmp_path)
    for name in ("table.csv", "stats.csv"):
        assert (rebuilt / name).read_text() == (sweep / "report" / name).read_text(), name


def test_runs_started_one_by_one_and_a_resumed_runs_earlier_epochs_are_archived(
    tmp_path_factory, tmp_path
):
    # A folder of single runs has no multirun.yaml; a resumed run's curve is in two files.
    sweep = smoke_sweep_dir(tmp_path_factory)
    runs = tmp_path / "runs"
    shutil.copytree(sweep, runs, ignore=shutil.ignore_patterns("report"))
    (runs / "multirun.yaml").unlink()
    log = runs / "unet-seed0" / "csv" / "metrics.csv"
    lines = log.read_text().splitlines(keepends=True)
    cut = len(lines) // 2
    log.with_name("metrics-20260101-000000.csv").write_text("".join(lines[:cut]))
    log.write_text("".join(lines[:1] + lines[cut:]))

    dest = tmp_path / "archive"
    files = load_benchmark("archive_sweep").archive(runs, dest)
    names = {f.relative_to(dest).as_posix() for f in files}
    cut_log = "unet-seed0/csv/metrics-20260101-000000.csv"
    assert {cut_log, "unet-seed0/csv/metrics.csv", "fpn-seed1/metrics.json"} <= names
    assert "multirun.yaml" not in names
    # Every job's curve, the cut one's included, is the one the sweep logged.
    for before, after in zip(load_sweep(sweep).runs, load_sweep(dest).runs, strict=True):
        pd.testing.assert_frame_equal(after.history, before.history)


def test_a_sweep_without_finished_jobs_is_refused(tmp_path):
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    with pytest.raises(SystemExit, match="finished"):
        load_benchmark("archive_sweep").archive(tmp_path / "sweep", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("archive", [CPU_SWEEP, CPU_6_EPOCHS, ZOO_SWEEP], ids=lambda p: p.name)
def test_the_committed_cpu_report_is_what_its_committed_runs_give(archive, tmp_path):
    rebuilt = rebuilt_report(archive, tmp_path)
    for name in ("table.csv", "stats.csv"):
        committed = (archive / "report" / name).read_text()
        assert (rebuilt / name).read_text() == committed, f"{name}: rerun brainseg-report"


def test_the_readme_headline_is_the_committed_cpu_report():
    table = (CPU_SWEEP / "report" / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| Dice |"))
    unet, fpn = (cell.strip() for cell in row.split("|")[2:4])  # columns: unet, fpn
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"| Dice | {unet} | {fpn} |" in readme, "README's headline differs from table.md"


def test_the_tuning_table_averages_each_recipe_over_its_seeds_and_ranks_by_validation():
    archives = [CPU_6_EPOCHS, RESULTS / "cpu-fp32"]
    tuning = load_benchmark("tuning_table")
    text = tuning.table(tuning.recipe_rows(archives))
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    by_recipe = {(cells[0].strip("| "), cells[6]): cells for cells in rows}  # (model, precision)
    assert set(by_recipe) == {(m, p) for m in ("unet", "fpn") for p in ("bf16-mixed", "32-true")}

    runs = [json.loads(p.read_text()) for p in sorted(CPU_6_EPOCHS.glob("*/metrics.json"))]
    unet = [r for r in runs if r["model"] == "unet"]
    bf16 = by_recipe["unet", "bf16-mixed"]
    assert bf16[7] == "3"  # three seeds, one row
    assert bf16[8].startswith(f"{sum(r['best_val_dice'] for r in unet) / 3:.4f} ± ")
    assert bf16[10].startswith(f"{sum(r['test']['dice'] for r in unet) / 3:.4f} ± ")
    assert by_recipe["unet", "32-true"][7] == "1" and " ± " not in by_recipe["unet", "32-true"][8]

    models = [cells[0].strip("| ") for cells in rows]
    assert models == sorted(models, reverse=True)  # unet rows, then fpn rows
    for model in ("unet", "fpn"):
        val = [float(cells[8].split()[0]) for cells in rows if cells[0].strip("| ") == model]
        assert val == sorted(val, reverse=True)


def test_curves_of_several_sweeps_share_one_figure_without_pooling_their_precisions(tmp_path):
    curves = load_benchmark("curves")
    sweep = load_sweeps([CPU_6_EPOCHS, RESULTS / "cpu-fp32-fpn"], out=tmp_path)
    dice_axis = learning_curves_figure(sweep).axes[0]
    assert [t.get_text() for t in dice_axis.get_legend().get_texts()] == [
        "unet (n=3)",
        "fpn trainer.precision=bf16-mixed (n=3)",
        "fpn trainer.precision=32-true (n=1)",
    ]
    out = tmp_path / "curves.png"
    curves.main([str(CPU_6_EPOCHS), "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_tuning_table_in_the_docs_is_what_the_committed_runs_give():
    tuning = load_benchmark("tuning_table")
    archives = sorted(p for p in RESULTS.iterdir() if p.is_dir())
    table = tuning.table(tuning.recipe_rows(archives))
    docs = (REPO_ROOT / "docs" / "results.md").read_text()
    assert table in docs, "rerun `python benchmarks/tuning_table.py docs/results/*` into the docs"
