"""A real smoke sweep (2 models x 2 seeds, synthetic data), trained once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def smoke_sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m brainseg.train -m experiment=smoke model=unet,fpn seed=0,1`, run on the first
    call of the session; later calls (from any test module) reuse its directory."""
    base = tmp_path_factory.getbasetemp() / "smoke_sweep"
    sweep, done = base / "sweep", base / "done"
    if done.exists():
        return sweep
    base.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "brainseg.train",
        "-m",
        "experiment=smoke",
        "model=unet,fpn",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        f"paths.data_dir={base / 'data'}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=base, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or len(list(sweep.glob("*/metrics.json"))) != 4:
        pytest.fail(f"the smoke sweep failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    done.touch()
    return sweep


def untrained_checkpoint(path: Path, model: str = "unet", *overrides: str) -> Path:
    """A checkpoint as brainseg.train writes it (weights + run config), of a smoke-preset network
    that was never trained: enough for predict and export, in a fraction of a second."""
    import torch
    from omegaconf import OmegaConf

    from brainseg.module import build_module

    from .conftest import compose_config

    cfg = compose_config(
        ["experiment=smoke", f"model={model}", f"paths.output_dir={path.parent}", *overrides]
    )
    config = OmegaConf.to_container(cfg, resolve=True)
    module = build_module(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": config}}, path)
    return path
