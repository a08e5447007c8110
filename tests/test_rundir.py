"""Job folders named by what they run, and a run directory's earlier run: kept when finished,
resumed when cut, refused otherwise; a sweep cut by SIGTERM exits non-zero and runs on later."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from brainseg.rundir import EarlierRunError, earlier_run, job_name, records_subdir
from brainseg.train import train

from .conftest import REPO_ROOT


def job_config(sweep_dir: Path, task: list[str], **settings) -> OmegaConf:
    """A job's configuration as Hydra resolves `hydra.sweep.subdir` in it."""
    cfg = {
        "model": {"name": settings.get("model", "unet")},
        "seed": settings.get("seed", 0),
        "data": {"fold": settings.get("fold")},
        "hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": task}, "job": {"num": 3}},
    }
    return OmegaConf.create(cfg)


def write_multirun(sweep_dir: Path, task: list[str]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"overrides": {"task": task}}})
    )


def test_job_folders_are_named_by_what_the_job_runs(tmp_path):
    write_multirun(
        tmp_path, ["model=unet,fpn", "seed=0,1", "data.fold=1,2", "trainer.max_epochs=6"]
    )
    job = ["model=fpn", "seed=1", "data.fold=2", "loss=dice"]
    assert job_name(_root_=job_config(tmp_path, job, model="fpn", seed=1, fold=2)) == (
        "fpn-seed1-fold2"
    )
    # Another swept key joins the name, with its value; a key set once for the whole sweep
    # does not.
    write_multirun(tmp_path, ["seed=0", "optimizer.lr=1e-3,3e-3", "trainer.max_epochs=6"])
    job = ["seed=0", "optimizer.lr=3e-3", "trainer.max_epochs=6"]
    assert job_name(_root_=job_config(tmp_path, job)) == "unet-seed0-optimizer.lr=0.003"
    # Without the sweep's multirun.yaml the job's number keeps two jobs apart.
    assert job_name(_root_=job_config(tmp_path / "elsewhere", job)) == "unet-seed0-job3"


def test_hydra_writes_no_records_over_a_finished_run(tmp_path):
    cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    assert records_subdir(".hydra", _root_=cfg) == ".hydra"
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    assert records_subdir(".hydra", _root_=cfg) == ".hydra"  # resumed: its records are renewed
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "ok"}))
    assert records_subdir(".hydra", _root_=cfg) is None


def test_an_earlier_run_is_kept_resumed_or_refused(smoke_cfg, tmp_path):
    cfg = smoke_cfg(run="job")
    job = Path(cfg.paths.output_dir)
    assert earlier_run(cfg) is None  # nothing there
    job.mkdir()
    (job / "error.txt").write_text("Traceback ...\nRuntimeError: out of memory\n")
    with pytest.raises(EarlierRunError, match=rf"left no checkpoints/last\.ckpt.*rm -r '{job}'"):
        train(cfg)
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert earlier_run(cfg) == job / "checkpoints" / "last.ckpt"
    record = {"status": "ok", "objective": {"metric": "val/dice", "value": 0.5}}
    (job / "metrics.json").write_text(json.dumps(record))
    before = (job / "metrics.json").stat().st_mtime_ns
    assert train(cfg) == record  # returned as recorded, nothing run
    assert (job / "metrics.json").stat().st_mtime_ns == before
    assert not (tmp_path / "data").exists()
    # A finished run with other settings than this job's is kept, and the job refused.
    (job / ".hydra").mkdir()
    other = OmegaConf.to_container(cfg, resolve=False)
    other["trainer"]["max_epochs"] = 24
    (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(other))
    with pytest.raises(EarlierRunError, match=r"other settings \(trainer\.max_epochs: 24 -> 2\)"):
        train(cfg)


def sweep(sweep_dir: Path, data_dir: Path, *extra: str, env: dict | None = None):
    command = [sys.executable, "-m", "tests.faults", "brainseg.train", "-m", "experiment=smoke"]
    command += ["model=unet", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    command += [f"paths.data_dir={data_dir}", *extra]
    run_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(command, cwd=REPO_ROOT, env=run_env, capture_output=True, text=True)


def records(sweep_dir: Path) -> dict[str, tuple[str, int]]:
    found = {}
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        record = json.loads(path.read_text())
        found[path.parent.name] = (record["status"], path.stat().st_mtime_ns)
    return found


@pytest.mark.slow
def test_a_sweep_cut_by_sigterm_exits_non_zero_and_its_rerun_adds_only_what_is_missing(tmp_path):
    root, data = tmp_path / "sweep", tmp_path / "data"
    cut = sweep(root, data, env={"BRAINSEG_TERM_AT_BATCH": "1:1"})
    assert cut.returncode == 143, cut.stderr[-3000:]
    assert {name: status for name, (status, _) in records(root).items()} == {
        "unet-seed0": "interrupted"
    }
    # Run again: the cut job resumes from its last checkpoint, the missing one runs.
    again = sweep(root, data)
    assert again.returncode == 0, again.stderr[-3000:]
    done = records(root)
    assert {name: status for name, (status, _) in done.items()} == {
        "unet-seed0": "ok",
        "unet-seed1": "ok",
    }
    assert json.loads((root / "unet-seed0" / "metrics.json").read_text())["epochs"] == 2
    assert len(list((root / "unet-seed0" / "csv").glob("metrics-*.csv"))) == 1  # resumed
    # Once more, with a third seed: only that one runs; the finished ones are kept as they are.
    third = sweep(root, data, "seed=0,1,2")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "already finished" in third.stdout + third.stderr
    now = records(root)
    assert set(now) == {"unet-seed0", "unet-seed1", "unet-seed2"}
    assert {name: now[name] for name in done} == done
