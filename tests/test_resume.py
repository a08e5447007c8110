"""A run cut off anywhere and resumed gives the uninterrupted run's results, bit for bit on a CPU;
a process killed at any point leaves no half-written file behind."""

from __future__ import annotations

import csv
import filecmp
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from brainseg.data.splits import split_fingerprint
from brainseg.train import train

from .conftest import compose_config
from .fake_sweep import make_sweep

REPO_ROOT = Path(__file__).resolve().parents[1]
# Everything the run's randomness could touch; the inference timings differ from run to run.
TEST_KEYS = ("dice", "dice_pooled", "precision", "recall", "lesion_recall", "loss")
EPOCHS = 3


def workers(count: int, persistent: bool = False) -> list[str]:
    return [f"data.num_workers={count}", f"data.persistent_workers={persistent}"]


def smoke(base: Path, run: str, augment_on: str, *overrides: str) -> list[str]:
    epochs = [] if any(o.startswith("trainer.max_epochs=") for o in overrides) else [EPOCHS]
    return [
        "experiment=smoke",
        *(f"trainer.max_epochs={e}" for e in epochs),
        "model=fpn",
        f"data.augment_on={augment_on}",
        f"paths.data_dir={base / 'data'}",
        f"scheduler.T_max={EPOCHS}",  # a run cut short keeps the straight run's schedule
        *overrides,
    ]


def run_in_process(base: Path, run: str, augment_on: str, *overrides: str) -> dict:
    output = [f"paths.output_dir={base / run}"]
    return train(compose_config(smoke(base, run, augment_on, *overrides) + output))


def run_killable(
    base: Path, run: str, augment_on: str, *overrides: str, kill: dict, expect: int = -9
) -> int:
    """The run as `python -m brainseg.train` in a process that SIGKILLs itself at `kill` (or
    is sent the signal `kill` names, and then exits with `expect`)."""
    command = [sys.executable, "-m", "tests.faults", "brainseg.train"]
    command += smoke(base, run, augment_on, *overrides) + [f"hydra.run.dir={base / run}"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **kill}
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if done.returncode not in (0, expect):
        pytest.fail(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return done.returncode


def val_per_epoch(run_dir: Path) -> dict[int, dict[str, str]]:
    """Validation metrics per epoch, from every CSV log of the run (a resume starts a new one)."""
    epochs: dict[int, dict[str, str]] = {}
    for log in sorted((run_dir / "csv").glob("metrics*.csv")):  # metrics-<time>.csv first
        with log.open() as f:
            for row in csv.DictReader(f):
                if row.get("val/dice"):
                    epochs[int(row["epoch"])] = {k: v for k, v in row.items() if k[:4] == "val/"}
    return epochs


def assert_same_run(run: Path, reference: Path, record: dict, expected: dict) -> None:
    assert record["epochs"] == EPOCHS and record["status"] == "ok"
    assert {k: record["test"][k] for k in TEST_KEYS} == {k: expected["test"][k] for k in TEST_KEYS}
    assert record["best_val_dice"] == expected["best_val_dice"]
    assert val_per_epoch(run) == val_per_epoch(reference)
    assert not list(run.rglob("*.tmp")), "a half-written file was left behind"


_STRAIGHT: dict[str, tuple[Path, str, dict]] = {}
# The kill tests run each training twice in a new process: the device path's only in test-all.
BOTH_PATHS = ["loader", "device"]
DEVICE_SLOW = ["loader", pytest.param("device", marks=pytest.mark.slow)]


def straight_run(factory: pytest.TempPathFactory, augment_on: str) -> tuple[Path, str, dict]:
    """An uninterrupted run with two persistent workers, trained once per session and path."""
    if augment_on not in _STRAIGHT:
        base = factory.mktemp(f"resume_{augment_on}")
        record = run_in_process(base, "straight", augment_on, *workers(2, persistent=True))
        assert len(val_per_epoch(base / "straight")) == EPOCHS
        _STRAIGHT[augment_on] = base, augment_on, record
    return _STRAIGHT[augment_on]


@pytest.fixture
def straight(request, tmp_path_factory) -> tuple[Path, str, dict]:
    return straight_run(tmp_path_factory, request.param)


@pytest.mark.parametrize("cut_after", [1, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize("straight", BOTH_PATHS, indirect=True)
def test_a_run_cut_after_an_epoch_and_resumed_equals_the_straight_run(straight, cut_after):
    # Cut with no workers, resumed with two that restart every epoch: neither the cut nor the
    # loader settings change what the run computes.
    base, augment_on, expected = straight
    run = f"cut after {cut_after}"
    cut = run_in_process(base, run, augment_on, f"trainer.max_epochs={cut_after}", *workers(0))
    last = base / run / "checkpoints" / "last.ckpt"
    taken = torch.load(last, map_location="cpu", weights_only=False)["wall_time_s"]
    assert 0 < taken <= cut["wall_time_s"]
    started = time.time()
    record = run_in_process(base, run, augment_on, f"ckpt_path={last}", *workers(2))
    resumed_for = time.time() - started
    assert_same_run(base / run, base / "straight", record, expected)
    # Its wall time counts what the run took up to the checkpoint, and what it took since.
    assert resumed_for < record["wall_time_s"] <= taken + resumed_for


def test_a_bf16_run_cut_and_resumed_equals_the_straight_run_too(tmp_path):
    # runtime.precision=auto trains in bf16 on CPUs with bf16 instructions; the smoke preset
    # pins float32, so bf16 is asked for here.
    bf16 = ("runtime.precision=bf16-mixed", *workers(0))
    started = time.time()
    expected = run_in_process(tmp_path, "straight", "loader", *bf16)
    # Testing best.ckpt after the fit does not add the time stored in it to the run's.
    assert expected["wall_time_s"] <= time.time() - started
    assert expected["trainer_precision"] == "bf16-mixed"
    run_in_process(tmp_path, "cut", "loader", *bf16, "trainer.max_epochs=1")
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    record = run_in_process(tmp_path, "cut", "loader", *bf16, f"ckpt_path={last}")
    assert_same_run(tmp_path / "cut", tmp_path / "straight", record, expected)


def test_resuming_with_another_cpu_thread_count_warns_and_names_the_fix(tmp_path, caplog):
    # On real data a run's numbers depend on the thread count (docs/reproducibility.md).
    threads = torch.get_num_threads()
    run_in_process(tmp_path, "cut", "loader", "trainer.max_epochs=1", *workers(0))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["cpu_threads"] == threads

    def warnings() -> list[str]:
        return [r.message for r in caplog.records if r.name == "brainseg.callbacks"]

    with caplog.at_level(logging.WARNING, logger="brainseg.callbacks"):
        run_in_process(tmp_path, "cut", "loader", "trainer.max_epochs=2", f"ckpt_path={last}")
        assert not warnings(), "resumed with the same thread count: nothing to warn of"
        torch.set_num_threads(threads + 1)
        try:
            run_in_process(tmp_path, "cut", "loader", f"ckpt_path={last}", *workers(0))
        finally:
            torch.set_num_threads(threads)
    [warning] = warnings()
    assert f"trained with {threads} CPU threads and resumes with {threads + 1}" in warning
    assert f"OMP_NUM_THREADS={threads}" in warning


@pytest.mark.parametrize("straight", ["loader"], indirect=True)
def test_last_checkpoint_holds_the_last_epoch_and_best_the_best(straight):
    base, _, expected = straight
    checkpoints = base / "straight" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(checkpoints / "best.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == EPOCHS - 1
    val = val_per_epoch(base / "straight")
    best_epoch = max(val, key=lambda epoch: float(val[epoch]["val/dice"]))
    assert best["epoch"] == best_epoch
    assert float(val[best_epoch]["val/dice"]) == pytest.approx(expected["best_val_dice"])


@pytest.mark.parametrize("straight", DEVICE_SLOW, indirect=True)
@pytest.mark.parametrize(
    "where, kill",
    [
        ("mid-epoch", {"BRAINSEG_KILL_AT_BATCH": "1:2"}),
        ("writing last.ckpt", {"BRAINSEG_KILL_ON_REPLACE": "last.ckpt:2"}),
    ],
)
def test_a_killed_run_resumes_to_the_straight_runs_result(straight, where, kill):
    base, augment_on, expected = straight
    run = f"killed {where}"
    assert run_killable(base, run, augment_on, kill=kill) == -9
    last = base / run / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0
    assert run_killable(base, run, augment_on, f"ckpt_path={last}", kill={}) == 0
    record = json.loads((base / run / "metrics.json").read_text())
    assert_same_run(base / run, base / "straight", record, expected)


@pytest.mark.parametrize("straight", ["loader"], indirect=True)
def test_a_run_killed_while_caching_reruns_to_the_same_result(straight, tmp_path):
    base, augment_on, expected = straight
    overrides = [f"paths.data_dir={tmp_path / 'data'}"]  # a cache of its own, built anew
    kill = {"BRAINSEG_KILL_ON_REPLACE": "*.npz:1"}
    assert run_killable(base, "killed caching", augment_on, *overrides, kill=kill) == -9
    assert not list((tmp_path / "data").rglob("*.npz")), "a cache was written despite the kill"
    assert run_killable(base, "killed caching", augment_on, *overrides, kill={}) == 0
    run = base / "killed caching"
    record = json.loads((run / "metrics.json").read_text())
    assert_same_run(run, base / "straight", record, expected)
    assert not list((tmp_path / "data").rglob("*.tmp"))


def test_a_report_killed_while_writing_is_written_whole_by_the_next_run(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    reference = tmp_path / "reference"
    shutil.copytree(sweep, reference)
    command = [sys.executable, "-m", "tests.faults", "brainseg.report", "--no-wandb"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    killed = {**env, "BRAINSEG_KILL_ON_REPLACE": "stats.csv:1"}
    run = subprocess.run([*command, str(sweep)], cwd=REPO_ROOT, env=killed, capture_output=True)
    assert run.returncode == -9
    assert not (sweep / "report" / "stats.csv").exists()
    for args in ([str(sweep)], [str(reference)]):
        subprocess.run([*command, *args], cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    assert not list(sweep.rglob("*.tmp"))
    for name in ("table.csv", "table.md", "stats.csv", "stats.md"):
        assert filecmp.cmp(sweep / "report" / name, reference / "report" / name, shallow=False)


def test_the_split_fingerprint_is_the_assignment_alone():
    ids, subsets = ["1", "2", "10"], ["train", "val", "test"]
    fingerprint = split_fingerprint(ids, subsets)
    assert len(fingerprint) == 64
    assert split_fingerprint(ids[::-1], subsets[::-1]) == fingerprint  # order does not matter
    assert split_fingerprint(ids, ["train", "test", "val"]) != fingerprint
    assert split_fingerprint(["1", "2", "11"], subsets) != fingerprint


def test_resuming_on_another_split_is_refused_testing_on_it_is_not(tmp_path):
    run_in_process(tmp_path, "cut", "loader", "trainer.max_epochs=1", *workers(0))
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    split = pd.read_csv(tmp_path / "cut" / "split.csv", dtype={"id": str})
    assert saved["BrainTumorDataModule"]["split_fingerprint"] == split_fingerprint(
        split["id"], split["subset"]
    )
    with pytest.raises(ValueError, match=r"trained on another split.*data\.split_seed"):
        run_in_process(tmp_path, "cut", "loader", f"ckpt_path={last}", "data.split_seed=7")
    # Testing the network on another split is a deliberate choice, and allowed.
    record = run_in_process(
        tmp_path, "other split", "loader", "fit=false", f"ckpt_path={last}", "data.split_seed=7"
    )
    assert record["test"] and record["epochs"] is None


def test_sigterm_records_the_run_as_interrupted_and_exits_non_zero(tmp_path):
    # Lightning stops a run on SIGTERM with a SystemExit that exits 0: a scheduler would see
    # success. Cut in the second epoch, the run has a last.ckpt to resume from.
    term = {"BRAINSEG_TERM_AT_BATCH": "1:1"}
    assert run_killable(tmp_path, "cut", "loader", kill=term, expect=143) == 143
    record = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    assert record["reason"].startswith("SIGTERM during fit, epoch 1")
    assert (tmp_path / "cut" / "checkpoints" / "last.ckpt").is_file()
