"""The benchmark scripts run end to end on tiny settings (their numbers are not checked)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest

from .conftest import REPO_ROOT


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_benchmark_measures_every_path_and_writes_its_json(tmp_path):
    throughput = load_script("throughput")
    out = tmp_path / "throughput.json"
    args = ["--preset", "smoke", "--steps", "1", "--warmup", "1", "--rounds", "1"]
    args += ["--workers", "0", "--loader-batches", "2", "--latency-iters", "2"]
    args += ["--infer-batch", "2", "--infer-iters", "1", "--data-dir", str(tmp_path / "data")]
    results = throughput.main([*args, "--out", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert [m["model"] for m in results["models"]] == ["unet", "fpn"]
    for model in results["models"]:
        train = model["train"][0]
        assert train["ratio"] == pytest.approx(
            train["brainseg_images_per_s"] / train["bare_images_per_s"]
        )
        assert {row["augment_on"] for row in model["loader"]} == {"loader", "device"}
        assert all(row["samples_per_s"] > 0 for row in model["loader"])
        assert {row["precision"] for row in model["inference"]} == {"32-true", "bf16-mixed"}
        assert model["projected_run_s"] is None  # projected at the study's settings only
    assert "projected_study_sweep_h" not in results


def test_study_sweep_projection_is_the_protocol_at_the_measured_rates():
    throughput = load_script("throughput")
    train = {"compiled": False, "brainseg_images_per_s": 100.0}
    infer = [
        {"compiled": False, "precision": "32-true", "batch_images_per_s": 50.0},
        {"compiled": False, "precision": "bf16-mixed", "batch_images_per_s": 400.0},
        {"compiled": True, "precision": "bf16-mixed", "batch_images_per_s": 800.0},
    ]
    # 80 epochs of 2134 training slices at 100 img/s and 468 validation slices at 400 img/s.
    expected = 80 * (2134 / 100.0 + 468 / 400.0)
    assert throughput.projected_run_s(train, infer, "bf16-mixed") == pytest.approx(expected)


@pytest.mark.slow
def test_gpu_check_script_runs_through_in_dry_mode(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "WANDB_MODE": "offline"}
    subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(results)],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    for model in ("unet", "fpn"):
        assert json.loads((results / f"throughput_{model}.json").read_text())["models"]
        record = json.loads((results / f"train_{model}_metrics.json").read_text())
        assert record["status"] == "ok" and record["model"] == model
    assert "card: dry-cpu" in (results / "machine.txt").read_text()
    # The smoke preset is not the study's: nothing to project from.
    assert "no projection" in (results / "projection.txt").read_text()
