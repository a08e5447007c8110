"""The benchmark scripts run end to end on tiny settings (their timings are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from types import SimpleNamespace

import pytest
from pytorch_lightning.callbacks import ModelCheckpoint

from brainseg.train import build_trainer

from .conftest import REPO_ROOT, compose_config, load_benchmark


def test_throughput_benchmark_measures_every_path_and_writes_its_json(tmp_path):
    throughput = load_benchmark("throughput")
    out = tmp_path / "throughput.json"
    args = ["--preset", "smoke", "--steps", "2", "--warmup", "1", "--rounds", "2"]
    args += ["--workers", "0", "--loader-batches", "2", "--latency-iters", "2"]
    args += ["--infer-batch", "3", "--infer-iters", "1", "--data-dir", str(tmp_path / "data")]
    results = throughput.main([*args, "--out", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert list(results) == ["command", "machine", "models", "wall_time_s"]  # no projection
    assert [m["model"] for m in results["models"]] == ["unet", "fpn"]
    smoke = compose_config(["experiment=smoke", "paths.output_dir=unused"])
    for model in results["models"]:
        assert model["params"] > 0 and model["projected_run_s"] is None
        settings = model["settings"]
        # The protocol is the smoke preset's (float32 included), the layout the CPU's.
        assert settings["image_size"] == smoke.data.image_size
        assert settings["batch_size"] == smoke.data.batch_size
        assert settings["precision"] == smoke.trainer.precision == "32-true"
        assert settings["channels_last"] is False
        assert settings["model"]["name"] == model["model"]
        (train,) = model["train"]
        assert train["compiled"] is False
        assert [len(times) for times in train["round_s"].values()] == [2, 2]
        assert train["bare_images_per_s"] > 0 and train["brainseg_images_per_s"] > 0
        assert train["ratio"] == pytest.approx(
            train["brainseg_images_per_s"] / train["bare_images_per_s"]
        )
        assert [row["augment_on"] for row in model["loader"]] == ["loader", "device"]
        for row in model["loader"]:
            assert row["samples_per_s"] > 0 and row["first_batch_s"] > 0
            assert row["ratio_to_consumption"] == pytest.approx(
                row["samples_per_s"] / train["bare_images_per_s"]
            )
        assert [row["precision"] for row in model["inference"]] == ["32-true", "bf16-mixed"]
        for row in model["inference"]:
            # No CUDA graph on a CPU; eager fp32 is the reference of the masks.
            assert row["batch"] == 3 and not row["compiled"] and row["path"] == "eager"
            assert 0 < row["batch1_ms_median"] <= row["batch1_ms_p90"]
            assert row["batch_images_per_s"] > 0
            assert 0 <= row["mask_pixels_differing"] <= 1
        assert model["inference"][0]["mask_pixels_differing"] == 0
        breakdown = model["breakdown"]
        for part in ("forward", "backward", "optimizer", "metrics"):
            assert breakdown[f"{part}_ms"] > 0
        assert breakdown["brainseg_step_ms"] == pytest.approx(
            1e3 * smoke.data.batch_size / train["brainseg_images_per_s"]
        )
        assert [row["on_device"] for row in model["pipeline"]] == [True, False]
        assert all(row["images_per_s"] > 0 for row in model["pipeline"])
        assert model["host_syncs"] is None  # counted on CUDA only


def test_round_config_is_the_preset_with_the_runtime_flags_as_overrides(tmp_path):
    throughput = load_benchmark("throughput")
    args = throughput.parse_args(["--channels-last", "on", "--precision", "bf16-mixed"])
    assert (args.preset, args.steps, args.warmup, args.compile) == ("cpu", 10, 2, False)
    cfg = throughput.compose_cfg(args, "fpn", tmp_path, compiled=True)

    cpu = compose_config(["experiment=cpu", "model=fpn", "paths.output_dir=unused"])
    assert cfg.data.image_size == cpu.data.image_size
    assert cfg.model.backbone == cpu.model.backbone
    assert cfg.trainer.max_epochs == cpu.trainer.max_epochs
    assert cfg.runtime.compile is True and cfg.runtime.channels_last is True
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.max_steps == 12
    trainer = build_trainer(cfg, loggers=[])
    assert trainer.logger is None and trainer.max_steps == 12
    assert not any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks)
    # The study preset on a CPU: few steps, a small inference batch.
    study = throughput.parse_args(["--preset", "study"])
    assert (study.steps, study.infer_batch) == (3, 4)


def test_study_run_reads_epochs_and_fractions_from_the_config():
    throughput = load_benchmark("throughput")
    cfg = compose_config(
        ["paths.output_dir=unused", "trainer.max_epochs=7", "data.fractions=[0.5,0.25,0.25]"]
    )
    synthetic = SimpleNamespace(data="synthetic")
    # Synthetic data: the config's fractions of the figshare set's 3064 slices.
    assert throughput.study_run(cfg, None, synthetic) == {"train": 1532, "val": 766, "epochs": 7}
    folder = SimpleNamespace(subset_sizes=lambda: {"train": 40, "val": 9, "test": 8})
    run = throughput.study_run(cfg, folder, SimpleNamespace(data="folder"))
    assert run == {"train": 40, "val": 9, "epochs": 7}  # the real split


def test_projected_run_is_the_epochs_at_the_measured_rates():
    throughput = load_benchmark("throughput")
    train = {"compiled": False, "brainseg_images_per_s": 100.0}
    infer = [
        {"compiled": False, "precision": "32-true", "batch_images_per_s": 50.0},
        {"compiled": False, "precision": "bf16-mixed", "batch_images_per_s": 400.0},
        {"compiled": True, "precision": "bf16-mixed", "batch_images_per_s": 800.0},
    ]
    run = {"train": 2134, "val": 468, "epochs": 80}
    # Training at brainseg's rate; validation at the eager rate in the training precision.
    expected = 80 * (2134 / 100.0 + 468 / 400.0)
    assert throughput.projected_run_s(train, infer, "bf16-mixed", run) == pytest.approx(expected)


@pytest.mark.slow
def test_gpu_check_script_runs_through_in_dry_mode(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "GPU_CHECK_DRY": "1", "WANDB_MODE": "offline", "PYTHON": sys.executable}
    for phase in ("speed", "study"):
        done = subprocess.run(
            ["bash", "benchmarks/gpu_check.sh", phase, str(results / phase)],
            cwd=REPO_ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert "== summary" in done.stdout
    speed = results / "speed"
    assert len(list(speed.iterdir())) <= 8 and len(list((results / "study").iterdir())) <= 8
    assert "card: dry-cpu" in (speed / "machine.txt").read_text()
    for model in ("unet", "fpn"):
        measured = json.loads((speed / f"throughput_{model}.json").read_text())["models"][0]
        assert measured["breakdown"] and measured["pipeline"] and measured["inference"]
    paths = json.loads((speed / "latency_paths.json").read_text())["models"]
    assert [row["path"] for row in paths] == ["eager fp32", "eager fp32"]  # no graph on a CPU
    with tarfile.open(results / "study" / "study_runs.tar.gz") as tar:
        names = tar.getnames()
    assert not [name for name in names if name.endswith(".ckpt")]
    assert "runs/report/table.md" in names
    for model in ("unet", "fpn"):
        record = json.loads(tar_member(results / "study" / "study_runs.tar.gz", model))
        assert record["status"] == "ok" and record["model"] == model
        assert record["test"]["inference_path"] == "eager fp32"


def tar_member(archive, model: str) -> str:
    with tarfile.open(archive) as tar:
        return tar.extractfile(f"runs/{model}/metrics.json").read().decode()


def test_data_pipeline_benchmark_runs_on_a_folder_with_the_configured_augmentation(
    tmp_path, monkeypatch
):
    from brainseg.config import compose
    from brainseg.data.synthetic import SyntheticSource

    from .test_doc_commands import write_folder_data

    root = write_folder_data(tmp_path / "tiny", SyntheticSource(12, 4, 32))
    out = tmp_path / "data_pipeline.json"
    argv = ["data_pipeline.py", "--root", str(root), "--image-size", "32", "--batch-size", "4"]
    argv += ["--batches", "3", "--workers", "0", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("data_pipeline").main()

    result = json.loads(out.read_text())
    assert result["data"]["slices"] == 12
    augment = compose(["data=folder", f"data.root={root}"]).data.augment
    assert result["train_loader"]["augment"]["hflip"] == augment.hflip
    assert set(result["train_loader"]["by_num_workers"]) == {"0", "0_torch_threads_1"}
