"""A real smoke sweep (2 models x 2 seeds, synthetic data), trained once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_sweep(
    *overrides: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`python -m brainseg.train -m <overrides>` in `cwd`, W&B offline, `env` added; fails the
    test with the end of its stderr when the sweep fails."""
    command = [sys.executable, "-m", "brainseg.train", "-m", *overrides]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env or {})}
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        pytest.fail(f"the sweep failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return result


def smoke_sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m brainseg.train -m experiment=smoke model=unet,fpn seed=0,1`, run on the first
    call of the session; later calls (from any test module) reuse its directory."""
    base = tmp_path_factory.getbasetemp() / "smoke_sweep"
    sweep, done = base / "sweep", base / "done"
    if done.exists():
        return sweep
    base.mkdir(parents=True, exist_ok=True)
    overrides = ["experiment=smoke", "model=unet,fpn", "seed=0,1"]
    run_sweep(*overrides, f"hydra.sweep.dir={sweep}", f"paths.data_dir={base / 'data'}", cwd=base)
    assert len(list(sweep.glob("*/metrics.json"))) == 4
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
