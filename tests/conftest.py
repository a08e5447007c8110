from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from omegaconf import DictConfig

from brainseg.config import compose

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "datasets" / "figshare-brain-tumor-png256"

# Tests never reach W&B's servers, and never prompt for a login.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True, scope="session")
def _brainseg_dirs(tmp_path_factory):
    """Data and runs of tests that name no folder go to the session's temporary directory, never
    to the user's ~/.cache/brainseg or ~/brainseg."""
    base = tmp_path_factory.getbasetemp()
    os.environ["BRAINSEG_DATA_DIR"] = str(base / "brainseg-data")
    os.environ["BRAINSEG_OUTPUT_DIR"] = str(base / "brainseg-outputs")
    yield


def load_benchmark(name: str) -> ModuleType:
    """The script benchmarks/<name>.py as a module (benchmarks/ is not a package)."""
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The training configuration as `python -m brainseg.train <overrides>` would compose it."""
    return compose(overrides)


@pytest.fixture
def smoke_cfg(tmp_path: Path):
    """Returns a factory of smoke-preset configs writing under tmp_path."""

    def make(*overrides: str, run: str = "run") -> DictConfig:
        return compose_config(
            [
                "experiment=smoke",
                f"paths.output_dir={tmp_path / run}",
                f"paths.data_dir={tmp_path / 'data'}",
                *overrides,
            ]
        )

    return make
