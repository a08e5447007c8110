"""Scale-out and fast paths: DDP across processes, Hydra launchers, torch.compile, NHWC, bf16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning_fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd
from omegaconf import open_dict

from brainseg.config import compose
from brainseg.models import SemanticFPN, UNet
from brainseg.module import build_module
from brainseg.train import pin_ddp_workers_to_this_job, train

from .conftest import REPO_ROOT, compose_config

# Tolerances of the fast paths against fp32 NCHW, on the same weights and input.
CHANNELS_LAST_ATOL = 1e-5
BF16_LOGIT_ATOL = 0.1
BF16_MASK_AGREEMENT = 0.99
# Test metrics that must not depend on the number of processes (timings do).
# Sums reduced across processes: exact. The loss is a mean of per-process float32 means.
EXACT_KEYS = ("dice", "dice_pooled", "precision", "recall", "lesion_recall")


def small_networks() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [
        UNet(in_channels=3, base_width=8).eval(),
        SemanticFPN(backbone="resnet18", pretrained=False, fpn_channels=32).eval(),
    ]


@torch.no_grad()
def test_channels_last_gives_the_same_logits():
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for net in small_networks():
        reference = net(images)
        net.to(memory_format=torch.channels_last)
        nhwc = net(images.contiguous(memory_format=torch.channels_last))
        first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(nhwc, reference, atol=CHANNELS_LAST_ATOL, rtol=1e-4)


@torch.no_grad()
def test_bf16_autocast_logits_and_masks_agree_with_fp32():
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for net in small_networks():
        reference = net(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = net(images)
        assert bf16.dtype == torch.bfloat16  # the path under test really ran in bf16
        bf16 = bf16.float()
        assert (bf16 - reference).abs().max() <= BF16_LOGIT_ATOL
        agreement = ((bf16 > 0) == (reference > 0)).float().mean()
        assert agreement > BF16_MASK_AGREEMENT


@pytest.fixture
def multirun_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Hydra's state inside job 1 of `-m experiment=smoke trainer=ddp seed=0,1`."""
    job_dir = tmp_path / "sweep" / "1"
    overrides = ["experiment=smoke", "trainer=ddp", "seed=1"]
    cfg = compose(overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.overrides.task = overrides
    HydraConfig.instance().set_config(cfg)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", "-m", "experiment=smoke", "seed=0,1"])
    yield job_dir
    HydraConfig.instance().cfg = None


def test_ddp_workers_rerun_only_their_multirun_job_in_its_directory(multirun_job):
    pin_ddp_workers_to_this_job()
    # What Lightning's DDP launcher then runs for rank 1:
    command, cwd = _hydra_subprocess_cmd(local_rank=1)
    args = command[3:] if command[1] == "-m" else command[2:]  # after `python -m <module>`
    assert "-m" not in args and "seed=0,1" not in args  # not the whole sweep again
    assert "seed=1" in args and "trainer=ddp" in args
    assert f'hydra.run.dir="{multirun_job}"' in args
    assert cwd == str(multirun_job.parents[1])


def run_train(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [sys.executable, "-m", "brainseg.train", *args]
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result


# Smoke data split by image: 7 test slices, which two processes cannot share evenly (Lightning's
# DistributedSampler would repeat one slice to make it 4 + 4).
SMOKE_DDP = [
    "experiment=smoke",
    "model=unet",
    "data.split=image",
    "data.eval_batch_size=4",
    "logger=csv",
]


@pytest.mark.slow
def test_ddp_two_processes_give_the_same_test_metrics_as_one(tmp_path):
    data = f"paths.data_dir={tmp_path / 'data'}"
    one, two = tmp_path / "one", tmp_path / "two"
    # A few epochs at a high rate so that the masks, and so every metric, are not trivial.
    fit = ["trainer.max_epochs=5", "optimizer.lr=3e-3"]
    run_train([*SMOKE_DDP, *fit, data, f"hydra.run.dir={one}"], tmp_path)
    # The same checkpoint, tested by 2 gloo processes without fitting.
    single = json.loads((one / "metrics.json").read_text())
    ckpt = single["best_checkpoint"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    run_train(
        [*SMOKE_DDP, *ddp, data, "fit=false", f"ckpt_path={ckpt}", f"hydra.run.dir={two}"], tmp_path
    )

    double = json.loads((two / "metrics.json").read_text())
    assert double["best_checkpoint"] == single["best_checkpoint"]
    assert single["test"]["dice_pooled"] > 0  # something is predicted: a real comparison
    for key in EXACT_KEYS:
        assert double["test"][key] == pytest.approx(single["test"][key], abs=1e-6), key
    # The Dice part of the loss pools each batch, and two processes batch the slices differently.
    assert double["test"]["loss"] == pytest.approx(single["test"]["loss"], rel=1e-2)
    # Per-image rows are gathered from both processes, each slice once.
    rows_one = pd.read_csv(one / "per_image.csv")
    rows_two = pd.read_csv(two / "per_image.csv")
    assert len(rows_one) == 7
    pd.testing.assert_frame_equal(rows_two, rows_one, atol=1e-6)
    # Rank 1 logged into the same run directory and wrote no records of its own.
    assert (two / "train_ddp_process_1.log").is_file()
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_ddp_under_multirun_keeps_every_rank_in_its_job_directory(tmp_path):
    sweep = tmp_path / "sweep"
    run_train(
        [
            "-m",
            *SMOKE_DDP,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=1",
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
        tmp_path,
    )
    for job in ("0", "1"):
        record = json.loads((sweep / job / "metrics.json").read_text())
        assert record["seed"] == int(job)
        assert (sweep / job / "train_ddp_process_1.log").is_file()
    # Without pinning, rank 1 would re-run the sweep or write under outputs/<date>/<time>.
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    run_train(
        [
            "-m",
            "experiment=smoke",
            "model=unet",
            "seed=0,1",
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=15",
            f"hydra.sweep.dir={sweep}",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
        tmp_path,
    )
    seeds = sorted(
        json.loads((sweep / job / "metrics.json").read_text())["seed"] for job in ("0", "1")
    )
    assert seeds == [0, 1]
    assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit


@pytest.mark.slow
def test_compiled_training_runs_on_cpu(smoke_cfg):
    cfg = smoke_cfg("model=unet", "trainer.max_epochs=1", "runtime.compile=true")
    record = train(cfg)
    assert record["status"] == "ok" and record["epochs"] == 1
    assert 0.0 <= record["test"]["dice"] <= 1.0


@pytest.mark.slow
@torch.no_grad()
def test_cuda_graph_timing_forward_gives_the_modules_logits():
    # On a CPU tensor torch.compile skips the CUDA graphs and runs the compiled network: the
    # wrapper (layout, compiled network) is what is checked here.
    cfg = compose_config(["experiment=smoke", "paths.output_dir=unused", "runtime.compile=true"])
    module = build_module(cfg).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    timed = module._timed_forward(torch.device("cuda"))
    assert timed is not module
    torch.testing.assert_close(timed(images), module.net(images), atol=1e-4, rtol=1e-4)
    assert module._timed_forward(torch.device("cpu")) is module
