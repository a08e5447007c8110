"""The command lines: fast help and errors, custom help, where runs go, the offline switch, the
closing line of a run and a sweep, and a quiet console."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from brainseg.config import compose, data_home, output_home, prepare_run_config
from brainseg.quiet import KnownNoise
from brainseg.summary import run_line, sweep_line
from brainseg.train import debug_reason

from .conftest import REPO_ROOT
from .fake_sweep import make_sweep

HEAVY = ("torch", "pytorch_lightning", "lightning", "wandb", "albumentations")


def python(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_hydra_clis_load_no_torch_lightning_or_wandb_before_composing(tmp_path):
    # What makes --help, tab completion and a config error answer in well under 2 s.
    code = (
        "import sys, brainseg.train, brainseg.predict, brainseg.export, brainseg.data.__main__; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = python("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("cli", ["train", "predict", "export"])
def test_help_gives_examples_and_the_settings_that_matter(cli, tmp_path):
    result = python("-m", f"brainseg.{cli}", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"brainseg-{cli}: ") and "Examples:" in out
    assert out.count(f"brainseg-{cli} ") >= 4
    assert len(out.splitlines()) < 40  # not the whole config
    if cli == "train":
        assert "model: fpn, monai_" in out and "experiment: cpu, smoke, study" in out
    else:  # the training groups do nothing here
        assert "ckpt_path" in out and "experiment:" not in out


def test_a_mistyped_group_option_lists_the_options(tmp_path):
    result = python("-m", "brainseg.train", "model=unett", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/unett'" in result.stderr
    assert "fpn" in result.stderr and "unet" in result.stderr


def test_data_and_outputs_resolve_from_one_root_whatever_the_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("BRAINSEG_DATA_DIR", raising=False)
    monkeypatch.delenv("BRAINSEG_OUTPUT_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_home() == str(tmp_path / "xdg" / "brainseg")
    assert output_home() == str(tmp_path / "home" / "brainseg")
    monkeypatch.setenv("BRAINSEG_DATA_DIR", "rel/data")  # relative: taken from where it is set
    monkeypatch.setenv("BRAINSEG_OUTPUT_DIR", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    cfg = compose(["experiment=smoke"], return_hydra_config=True)
    assert cfg.paths.data_dir == str(tmp_path / "rel" / "data")
    assert cfg.hydra.run.dir.startswith(str(tmp_path / "runs" / "outputs") + "/")
    assert cfg.hydra.sweep.dir.startswith(str(tmp_path / "runs" / "multirun") + "/")


def test_a_run_stores_its_data_root_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose(["data=folder", "data.root=mine", "paths.output_dir=x", "paths.data_dir=d"])
    prepare_run_config(cfg)
    assert cfg.data.root == str(tmp_path / "mine")
    assert cfg.data.source.root == str(tmp_path / "mine")
    assert cfg.data.cache_dir == str(tmp_path / "d" / "cache")


def test_offline_downloads_nothing_and_takes_weights_from_weights_dir(tmp_path, caplog):
    base = ["model=fpn", "paths.output_dir=x", "offline=true"]
    cfg = compose(base)
    with caplog.at_level(logging.WARNING):
        prepare_run_config(cfg)
    assert cfg.data.source.download is False and cfg.logger.wandb.offline is True
    assert cfg.model.pretrained is False and cfg.model.weights_path is None
    assert "trains from scratch" in caplog.text and "resnet50.pth" in caplog.text

    (tmp_path / "resnet50.pth").write_bytes(b"")
    cfg = compose([*base, f"weights_dir={tmp_path}"])
    prepare_run_config(cfg)
    assert cfg.model.pretrained is True
    assert cfg.model.weights_path == str(tmp_path / "resnet50.pth")

    online = compose(["model=fpn", "paths.output_dir=x"])
    prepare_run_config(online)
    assert online.data.source.download is True and online.logger.wandb.offline is False
    assert online.model.pretrained is True and online.model.weights_path is None


def test_brainseg_offline_in_the_environment_is_the_switch(monkeypatch):
    monkeypatch.setenv("BRAINSEG_OFFLINE", "true")
    assert compose(["paths.output_dir=x"]).offline is True


def test_a_limited_test_of_a_checkpoint_is_a_debug_run():
    trainer = OmegaConf.create({"max_epochs": 2, "limit_train_batches": 5})
    assert debug_reason(trainer, fit=False) is None  # training settings: no training ran
    trainer.limit_test_batches = 10
    assert debug_reason(trainer, fit=False) == "limit_test_batches=10"
    assert debug_reason(trainer) == "limit_train_batches=5"


def test_the_closing_lines_name_the_folder_the_numbers_and_the_report(tmp_path):
    record = {"model": "unet", "seed": 1, "status": "ok", "debug": None, "test": {"dice": 0.74}}
    line = run_line(record, tmp_path / "run 1")
    assert line == (
        f"run {tmp_path / 'run 1'}: unet seed 1, test Dice 0.7400, status ok · next: "
        f"brainseg-report '{tmp_path / 'run 1'}'"
    )
    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1), debug=[("fpn", 1)])
    dice = {
        model: [
            json.loads((sweep / str(n) / "metrics.json").read_text())["test"]["dice"] for n in jobs
        ]
        for model, jobs in (("unet", (0, 1)), ("fpn", (2,)))
    }
    line = sweep_line(sweep)
    assert line.startswith(f"sweep {sweep}: 4 jobs, 3 ok, 1 debug; test Dice ")
    assert f"unet {sum(dice['unet']) / 2:.4f} (n=2)" in line
    assert f"fpn {dice['fpn'][0]:.4f} (n=1)" in line
    assert line.endswith(f"next: brainseg-report {sweep}")


def test_the_console_drops_known_chatter_only():
    noise = KnownNoise()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("pl", logging.INFO, __file__, 1, message, None, None)

    assert not noise.filter(record("💡 Tip: For seamless cloud logging, try installing x"))
    summary = record("486 K     Total params\n0         Total Flops\n110       Modules")
    assert noise.filter(summary) and "Flops" not in summary.getMessage()
    assert "Total params" in summary.getMessage() and "Modules" in summary.getMessage()
    counted = record("1.2 G     Total Flops")
    assert noise.filter(counted) and "Total Flops" in counted.getMessage()
    assert noise.filter(record("Trainer.fit stopped: max_epochs=2 reached."))


def test_a_run_from_any_directory_logs_to_its_folder_and_ends_with_one_line(tmp_path):
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = {"BRAINSEG_OUTPUT_DIR": str(tmp_path / "out"), "BRAINSEG_DATA_DIR": str(tmp_path / "d")}
    overrides = ["experiment=smoke", "trainer.max_epochs=1", "timing.iters=1"]
    result = python("-m", "brainseg.train", *overrides, cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "out" / "outputs").glob("*/*")
    assert list(elsewhere.iterdir()) == []  # nothing where it was started
    assert (tmp_path / "d" / "cache").is_dir()
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"run {run_dir}: unet seed 0, test Dice ")
    assert last.endswith(f"next: brainseg-report {run_dir}")
    log = (run_dir / "train.log").read_text()
    assert "Trainer.fit` stopped" in log and "Seed set to 0" in log
    assert "Tip:" not in result.stdout and "Total Flops" not in result.stdout
