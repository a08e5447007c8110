from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException

from brainseg import config
from brainseg.config import cpu_has_bf16, gpu_of_job, resolve_precision
from brainseg.module import build_module, load_module, read_checkpoint
from brainseg.train import config_of_checkpoint, train

from .conftest import compose_config
from .smoke_sweep import smoke_sweep_dir

METRICS_KEYS = {
    "status",
    "model",
    "seed",
    "fold",
    "params",
    "epochs",
    "wall_time_s",
    "git_commit",
    "best_checkpoint",
    "best_val_dice",
    "trainer_precision",
    "device",
    "test",
}
TEST_KEYS = {
    "dice",
    "dice_pooled",
    "precision",
    "recall",
    "lesion_recall",
    "loss",
    "inference_ms",
    "inference_ms_std",
    "images_per_s",
}


def test_defaults_reproduce_the_study():
    cfg = compose_config(["paths.output_dir=unused"])
    assert cfg.data.image_size == 256
    assert cfg.data.fractions == [0.7, 0.15, 0.15]
    assert cfg.data.batch_size == 16
    assert cfg.model.name == "unet" and cfg.model.base_width == 64
    assert cfg.trainer.max_epochs == 80
    assert cfg.optimizer.lr == pytest.approx(1e-4) and cfg.scheduler.eta_min == pytest.approx(1e-5)
    assert cfg.loss._target_.endswith("DiceFocalLoss")
    fpn = compose_config(["model=fpn", "paths.output_dir=unused"])
    assert fpn.model.backbone == "resnet50" and fpn.model.pretrained is True


@pytest.mark.parametrize(
    ("experiment", "model", "key", "value", "other"),
    [
        ("cpu", "unet", "base_width", 16, 32),
        ("cpu", "fpn", "backbone", "resnet18", "resnet34"),
        ("smoke", "fpn", "backbone", "resnet18", "resnet34"),
    ],
)
def test_presets_specialise_each_model(experiment, model, key, value, other):
    cfg = compose_config([f"experiment={experiment}", f"model={model}", "paths.output_dir=x"])
    assert cfg.model[key] == value
    # A command-line override still wins over the preset.
    cfg = compose_config(
        [f"experiment={experiment}", f"model={model}", "paths.output_dir=x", f"model.{key}={other}"]
    )
    assert cfg.model[key] == other


def test_auto_precision_follows_the_hardware_and_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "auto") == "32-true"
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "auto") == resolve_precision("auto", "cpu") == "bf16-mixed"
    assert resolve_precision("32-true", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    monkeypatch.setattr(config, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "32-true"  # the CPU's rule, GPU or not
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision(None, "gpu") == "16-mixed"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"


def test_cpu_bf16_detection_reads_the_cpu_flags():
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this system")
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize("model", ["unet", "fpn"])
def test_fit_and_test_write_the_run_records(smoke_cfg, model):
    cfg = smoke_cfg(f"model={model}")
    record = train(cfg)
    out = Path(cfg.paths.output_dir)

    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(record))
    assert set(written) >= METRICS_KEYS
    assert set(written["test"]) >= TEST_KEYS
    assert written["model"] == model and written["epochs"] == cfg.trainer.max_epochs
    assert written["status"] == "ok" and written["debug"] is None
    assert written["split"] == "patient"  # what was used; the config says auto
    assert 0.0 <= written["test"]["dice"] <= 1.0
    assert written["test"]["inference_ms"] > 0
    # On a CPU only eager is timed, in the run's precision.
    assert written["test"]["inference_path"] in ("eager fp32", "eager bf16")
    assert written["test"]["inference_ms"] == written["test"]["inference_ms_eager"]

    split = pd.read_csv(out / "split.csv")
    per_image = pd.read_csv(out / "per_image.csv")
    test_ids = set(split.loc[split.subset == "test", "id"].astype(str))
    assert set(per_image["id"].astype(str)) == test_ids
    # The headline Dice is the mean of the per-image Dice written for the report.
    assert per_image["dice"].mean() == pytest.approx(written["test"]["dice"], abs=1e-5)
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    epochs = pd.read_csv(out / "csv" / "metrics.csv")
    assert epochs["val/dice"].notna().sum() == cfg.trainer.max_epochs


def test_overfitting_one_batch_drives_the_loss_down():
    cfg = compose_config(["experiment=smoke", "paths.output_dir=unused", "optimizer.lr=0.01"])
    torch.manual_seed(0)
    module = build_module(cfg)
    images = torch.randn(4, 3, 64, 64)
    masks = (images[:, :1] > 1.0).float()
    optimizer = module.configure_optimizers()["optimizer"]
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = module.loss(module(images), masks)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_alone_rebuilds_the_trained_network(smoke_cfg):
    cfg = smoke_cfg("trainer.max_epochs=1")
    record = train(cfg)
    module = load_module(record["best_checkpoint"])
    state = torch.load(record["best_checkpoint"], map_location="cpu", weights_only=False)
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, state["state_dict"][name]), name
    assert not module.training

    evaluated = train(smoke_cfg("fit=false", f"ckpt_path={record['best_checkpoint']}", run="eval"))
    assert evaluated["test"]["dice"] == record["test"]["dice"]
    assert evaluated["test"]["loss"] == record["test"]["loss"]
    assert evaluated["epochs"] is None


def test_testing_a_checkpoint_takes_its_data_and_model_from_it(smoke_cfg, tmp_path):
    record = train(smoke_cfg("trainer.max_epochs=1", "data.source.num_slices=40"))
    ckpt = record["best_checkpoint"]
    # Composed without the smoke preset, the data would be the figshare download and the
    # network a width-64 U-Net; the checkpoint's own synthetic data and network are used.
    overrides = ["fit=false", f"ckpt_path={ckpt}", "data.fold=null", "timing.iters=2"]
    cfg = compose_config([*overrides, f"paths.output_dir={tmp_path / 'eval'}", "logger=csv"])
    evaluated = train(cfg, overrides)
    assert evaluated["test"]["dice"] == record["test"]["dice"]
    assert evaluated["params"] == record["params"]
    saved = read_checkpoint(ckpt)["hyper_parameters"]["config"]
    merged = config_of_checkpoint(cfg, saved, [*overrides, "data.batch_size=3"])
    assert merged.data.source.num_slices == 40 and merged.model.base_width == 8
    assert merged.data.batch_size == cfg.data.batch_size  # the command line wins
    assert merged.paths.output_dir == str(tmp_path / "eval")  # where it runs: this run's


def test_trainer_holds_only_lightning_arguments():
    cfg = compose_config(["paths.output_dir=unused"])
    accepted = set(inspect.signature(pl.Trainer.__init__).parameters)
    assert set(cfg.trainer) - {"_target_"} <= accepted
    assert set(cfg.runtime) == {
        "precision",
        "compile",
        "compile_mode",
        "channels_last",
        "matmul_precision",
    }
    # runtime.precision=auto, resolved on this CPU
    assert cfg.trainer.precision == ("bf16-mixed" if cpu_has_bf16() else "32-true")


def test_testing_without_fitting_needs_a_checkpoint(smoke_cfg):
    with pytest.raises(ValueError, match="ckpt_path"):
        train(smoke_cfg("fit=false"))


def test_load_module_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        load_module(tmp_path / "nothing.ckpt")


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04 cut short"])
def test_a_garbage_checkpoint_is_named_before_any_work(smoke_cfg, tmp_path, content):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(content)
    with pytest.raises(ValueError, match=r"garbage\.ckpt is not a readable PyTorch checkpoint"):
        load_module(garbage)
    for overrides in (("fit=false",), ()):  # testing it, or resuming from it
        with pytest.raises(ValueError, match=r"garbage\.ckpt.*best\.ckpt or last\.ckpt"):
            train(smoke_cfg(*overrides, f"ckpt_path={garbage}"))
    assert not (tmp_path / "data").exists()  # nothing cached


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=-4", r"data\.batch_size=-4 must be a positive"),
        ("data.eval_batch_size=-1", r"data\.eval_batch_size=-1 must be a positive"),
        (
            "data.image_size=100",
            r"data\.image_size=100: model unet needs a multiple of 32; "
            r"use data\.image_size=96 or 128",
        ),
        ("data.fractions=[0.5,0.5,0.5]", r"data\.fractions=\[0\.5, 0\.5, 0\.5\] must be three"),
        ("data.fold=0", r"data\.fold=0 must be a fold number"),
    ],
)
def test_bad_settings_fail_before_any_data_is_cached(smoke_cfg, tmp_path, override, message):
    # Hydra wraps the data module's ValueError, keeping its message.
    with pytest.raises((ValueError, InstantiationException), match=message):
        train(smoke_cfg(override))
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "override, reason",
    [
        ("trainer.max_epochs=0", "max_epochs=0"),
        ("+trainer.fast_dev_run=true", "fast_dev_run=True"),
        ("+trainer.limit_train_batches=2", "limit_train_batches=2"),
        ("debug=fast_dev_run", "fast_dev_run=True"),
        ("debug=limit", "limit_train_batches=5"),
    ],
)
def test_debug_runs_are_recorded_as_debug_not_ok(smoke_cfg, override, reason):
    cfg = smoke_cfg(override)
    train(cfg)
    record = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert record["status"] == "debug" and record["debug"] == reason


def test_wandb_offline_run_writes_its_files_under_the_run_dir(smoke_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = smoke_cfg("logger=wandb", "trainer.max_epochs=1")
    train(cfg)
    from brainseg.tracking.run import finish_wandb

    finish_wandb()
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(runs[0].glob("*.wandb"))


def test_multirun_sweep_writes_one_record_per_job(tmp_path_factory):
    sweep = smoke_sweep_dir(tmp_path_factory)
    records = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(records) == 4
    assert {(r["model"], r["seed"]) for r in records} == {
        ("unet", 0),
        ("unet", 1),
        ("fpn", 0),
        ("fpn", 1),
    }
    splits = [(p.parent / "split.csv").read_text() for p in sorted(sweep.glob("*/metrics.json"))]
    assert all(split == splits[0] for split in splits), "every job must see the same split"


def test_jobs_side_by_side_take_the_gpus_in_turn(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [gpu_of_job(k) for k in range(6)] == [[0], [1], [2], [3], [0], [1]]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(RuntimeError, match="trainer=cpu"):
        gpu_of_job(0)


def test_compiled_and_plain_modules_save_the_same_keys():
    cfg = compose_config(["experiment=smoke", "paths.output_dir=unused"])
    plain = build_module(cfg).state_dict()
    compiled = build_module(
        compose_config(["experiment=smoke", "paths.output_dir=unused", "runtime.compile=true"])
    ).state_dict()
    assert set(plain) == set(compiled)
    assert all(key.startswith(("net.", "loss.")) for key in plain), sorted(plain)[:5]


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed=1.5", r"seed=1\.5 must be a whole number"),
        ("seed=abc", r"seed='abc' must be a whole number"),
        ("data.eval_batch_size=0", r"data\.eval_batch_size=0 must be a positive number"),
        ("data.split_seed=true", r"data\.split_seed=True must be a whole number"),
        ("fit=maybe", r"fit='maybe' must be true or false"),
        ("+foo=1", r"foo=1: no such setting, nothing would read it"),
    ],
)
def test_settings_that_do_not_fit_their_type_name_the_key(smoke_cfg, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(smoke_cfg(override))
    assert not (tmp_path / "data").exists()  # refused before any data work


def test_an_eval_batch_size_of_zero_is_no_synonym_of_null():
    from brainseg.data import BrainTumorDataModule
    from brainseg.data.synthetic import SyntheticSource

    source = SyntheticSource(num_slices=8, num_patients=4, size=32)
    assert BrainTumorDataModule(source, batch_size=4).eval_batch_size == 4
    with pytest.raises(ValueError, match=r"data\.eval_batch_size=0 must be a positive"):
        BrainTumorDataModule(source, batch_size=4, eval_batch_size=0)


@pytest.mark.parametrize(
    "overrides, status, reason",
    [
        (["data.fractions=[0.8,0.2,0.0]"], "no_test", r"the test set is empty"),
        (["test=false"], "no_test", r"test=false"),
        # Fold 2 of 20 one-slice patients is slices 1, 6, 11 and 16: all tumor-free.
        (
            ["data.source.num_slices=20", "data.source.num_patients=20", "data.fold=2"],
            "no_tumor_test",
            r"none of the 4 test slices has a tumor",
        ),
    ],
)
def test_a_run_without_a_test_set_or_tumor_in_it_is_not_ok(smoke_cfg, overrides, status, reason):
    cfg = smoke_cfg("trainer.max_epochs=1", *overrides)
    record = train(cfg)
    written = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert written["status"] == record["status"] == status
    assert re.search(reason, written["reason"])
    if status == "no_test":
        assert written["test"] == {}
        assert not (Path(cfg.paths.output_dir) / "per_image.csv").exists()


def test_the_objective_is_the_best_validation_score_never_a_test_metric(smoke_cfg, tmp_path):
    cfg = compose_config(
        [
            "experiment=smoke",
            "trainer.max_epochs=3",
            f"paths.output_dir={tmp_path / 'run'}",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
    )
    value = _main_in_hydra(cfg)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    epochs = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    assert value == record["best_val_dice"] == pytest.approx(epochs["val/dice"].max())
    assert record["objective"] == {"metric": "val/dice", "value": value}
    assert value != record["test"]["dice"]  # what was returned before
    tested = ["fit=false", f"ckpt_path={record['best_checkpoint']}"]
    assert _main_in_hydra(smoke_cfg(*tested, run="tested")) is None  # nothing was optimised

    # Another validation metric: the checkpoint that is tested and the objective follow it.
    loss = [
        "optimized_metric=val/loss",
        "callbacks.best_checkpoint.monitor=val/loss",
        "callbacks.best_checkpoint.mode=min",
    ]
    record = train(smoke_cfg("trainer.max_epochs=3", *loss, run="loss"))
    epochs = pd.read_csv(tmp_path / "loss" / "csv" / "metrics.csv")
    assert record["objective"]["value"] == pytest.approx(epochs["val/loss"].min())
    with pytest.raises(ValueError, match=r"optimized_metric='test/dice': .* never a test"):
        train(smoke_cfg("optimized_metric=test/dice"))
    with pytest.raises(ValueError, match=r"callbacks\.best_checkpoint\.monitor=val/loss"):
        train(smoke_cfg("optimized_metric=val/loss"))


def _main_in_hydra(cfg) -> float | None:
    """What `python -m brainseg.train` returns to its sweeper for `cfg`."""
    from hydra.core.hydra_config import HydraConfig

    from brainseg.config import compose
    from brainseg.train import main

    hydra_cfg = compose(["experiment=smoke", "paths.output_dir=unused"], return_hydra_config=True)
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        return main(cfg)  # Hydra's decorator runs a given config as it is
    finally:
        HydraConfig.instance().cfg = None
