"""brainseg as its users install it: a wheel that runs from any folder, console scripts that
the shell completes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from .conftest import REPO_ROOT

SCRIPTS = Path(sys.executable).parent
# What a checkout holds besides its sources, at its top.
LOCAL = {".git", ".venv", "build", "data", "outputs", "multirun", "wandb", "brainseg.egg-info"}


def unshipped(folder: str, names: list[str]) -> set[str]:
    local = LOCAL if Path(folder) == REPO_ROOT else set()
    return {name for name in names if name in local or name == "__pycache__"}


def run(args: list, cwd: Path | str, env: dict | None = None, timeout: int = 600) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_wheel_runs_the_smoke_preset_from_the_root_folder(tmp_path: Path):
    # A plain (not editable) install: the configs must come from inside the package. Built from
    # a copy, as setuptools builds in the source tree.
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=unshipped)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path, source], "/")
    (wheel,) = tmp_path.glob("brainseg-*.whl")
    env_dir = tmp_path / "env"
    run([sys.executable, "-m", "venv", env_dir], "/")
    python = env_dir / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], "/")
    # The dependencies (torch, Lightning, ...) from this environment; not its own brainseg,
    # whose editable-install hook lives in a .pth file that a path entry does not run.
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], "/")
    (Path(site.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = run([python, "-c", "import brainseg; print(brainseg.__file__)"], "/")
    assert Path(where.strip()).is_relative_to(env_dir), where
    run_dir = tmp_path / "run"
    run(
        [
            env_dir / "bin" / "brainseg-train",
            "experiment=smoke",
            "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
        "/",
    )
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "ok" and record["model"] == "unet"
    assert 0.0 <= record["test"]["dice"] <= 1.0


def complete(line: str) -> list[str]:
    """What bash completion offers for `line` (Hydra's completion query)."""
    out = run([SCRIPTS / "brainseg-train", "-sc", "query=bash"], REPO_ROOT, {"COMP_LINE": line})
    return out.split()


def test_brainseg_train_completes_presets_and_groups():
    assert {"experiment=cpu", "experiment=smoke", "experiment=study"} <= set(
        complete("brainseg-train experiment=")
    )
    assert {"debug=fast_dev_run", "debug=overfit", "debug=limit", "debug=profiler"} <= set(
        complete("brainseg-train debug=")
    )
    assert "runtime.precision=" in complete("brainseg-train runtime.")


def test_every_console_script_answers_help():
    for name in ("brainseg-train", "brainseg-predict", "brainseg-export"):
        out = run([SCRIPTS / name, "--help"], REPO_ROOT)
        assert out.startswith(f"{name}: ") and f"\n  {name} " in out, name  # brainseg's examples
    for name in ("brainseg-data", "brainseg-report"):
        assert "usage:" in run([SCRIPTS / name, "--help"], REPO_ROOT), name
