"""One inference path: predict, the report's grids and the W&B media give the test stage's masks;
`fit=false` reproduces the checkpoint's run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import brainseg.config
import brainseg.module
from brainseg.data.transforms import SlicePreprocessor
from brainseg.inference import Predictor, parse_precision, predict_logits
from brainseg.metrics import logits_to_masks
from brainseg.metrics.scores import count_lesions, per_image_scores
from brainseg.predict import predict
from brainseg.report.collect import Run
from brainseg.report.qualitative import _predict_slices
from brainseg.train import train

from .conftest import compose_config

# Near the barely trained smoke network's probabilities (about 0.41): part of every slice is
# predicted, and many pixels lie close to the threshold, where any other rounding shows. The
# default 0.5 would predict nothing: a predict that ignored the checkpoint's threshold fails.
THRESHOLD = 0.415
TIMING_KEYS = (
    "inference_ms",
    "inference_ms_std",
    "inference_ms_median",
    "inference_ms_eager",
    "images_per_s",
)


@pytest.fixture(scope="module")
def tested_run(tmp_path_factory):
    """A smoke run (CPU, 32-true) and the masks its test stage scored, by slice id."""
    return _tested_run(tmp_path_factory.mktemp("tested"), "32-true")


@pytest.fixture(scope="module", params=["32-true", "bf16-mixed"])
def tested_runs(request, tested_run, tmp_path_factory):
    """The 32-true run, and a bf16-mixed one: there predict in float32 would differ."""
    if request.param == "32-true":
        return tested_run
    return _tested_run(tmp_path_factory.mktemp("tested_bf16"), request.param)


def _tested_run(base: Path, precision: str) -> dict:
    cfg = compose_config(
        ["experiment=smoke", f"metrics.threshold={THRESHOLD}", f"runtime.precision={precision}",
         f"paths.output_dir={base / 'run'}", f"paths.data_dir={base / 'data'}"]
    )  # fmt: skip
    scored: list[np.ndarray] = []
    real = brainseg.module.registry.compute_columns

    def recording(logits, target, metric_args, stage):
        if stage == "test":
            threshold = metric_args.get("threshold", 0.5)
            scored.extend(logits_to_masks(logits[:, 0], threshold).cpu().numpy())
        return real(logits, target, metric_args, stage)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(brainseg.module.registry, "compute_columns", recording)
        record = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    per_image = pd.read_csv(run_dir / "per_image.csv", dtype={"id": str})
    assert len(scored) == len(per_image)  # the test stage's calls, in the rows' order
    masks = dict(zip(per_image["id"], scored, strict=True))
    return {"cfg": cfg, "record": record, "dir": run_dir, "per_image": per_image, "masks": masks}


def _test_slices(run_dir: Path, cfg) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The run's test slices as cached (uint8) and their truth masks, by id."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    position = {sample_id: i for i, sample_id in enumerate(datamodule.data.ids)}
    ids = datamodule.datasets["test"].ids
    images = {i: datamodule.data.images[position[i]] for i in ids}
    truths = {i: datamodule.data.masks[position[i]] for i in ids}
    return images, truths


def test_predict_gives_the_masks_the_test_stage_scored(tested_runs, tmp_path):
    tested_run = tested_runs
    images, truths = _test_slices(tested_run["dir"], tested_run["cfg"])
    inputs = tmp_path / "slices"
    inputs.mkdir()
    for sample_id, image in images.items():
        Image.fromarray(image).save(inputs / f"{sample_id}.png")  # lossless
    ckpt = tested_run["record"]["best_checkpoint"]
    result = predict(ckpt, inputs, tmp_path / "out", batch_size=3)  # other batches than the test's
    assert not result.failed

    rows = tested_run["per_image"].set_index("id")
    predicted_any = False
    for sample_id, scored in tested_run["masks"].items():
        mask = np.asarray(Image.open(tmp_path / "out" / f"{sample_id}_mask.png")) > 0
        np.testing.assert_array_equal(mask, scored, err_msg=f"slice {sample_id}")
        predicted_any |= mask.any() and not mask.all()
        # and per_image.csv's row, recomputed from predict's mask against the cached truth
        pred, truth = torch.from_numpy(mask)[None], torch.from_numpy(truths[sample_id] > 0)[None]
        stats = per_image_scores(pred, truth)
        stats["lesions"], stats["lesions_detected"] = count_lesions(pred, truth, 8, 0.0, "auto")
        for key, value in stats.items():
            assert value.item() == pytest.approx(rows.loc[sample_id, key], abs=1e-7), key
    assert predicted_any  # partial masks: the comparison says something
    precision = tested_run["record"]["trainer_precision"]
    assert f"precision {precision} (as the checkpoint was tested)" in result.settings
    assert f"threshold {THRESHOLD:g} (the checkpoint's metrics.threshold)" in result.settings


def test_the_reports_grids_show_the_masks_the_test_stage_scored(tested_runs):
    tested_run = tested_runs
    metrics = json.loads((tested_run["dir"] / "metrics.json").read_text())
    run = Run(job_dir=tested_run["dir"], status="ok", model="unet", seed=0, fold=None,
              variant="unet", metrics=metrics, per_image=tested_run["per_image"])  # fmt: skip
    ids = list(tested_run["masks"])
    shown = _predict_slices(run, ids)
    for sample_id in ids:
        np.testing.assert_array_equal(shown[sample_id]["pred"], tested_run["masks"][sample_id])


def test_fit_false_reproduces_a_cpu_fp32_run(tested_run, tmp_path, monkeypatch):
    # The default preset would run in bf16 on a CPU with bf16 instructions: pretend this is one.
    monkeypatch.setattr(brainseg.config, "cpu_has_bf16", lambda: True)
    ckpt = tested_run["record"]["best_checkpoint"]
    overrides = ["fit=false", f"ckpt_path={ckpt}", "logger=csv"]
    cfg = compose_config([*overrides, f"paths.output_dir={tmp_path / 'eval'}"])
    assert cfg.trainer.precision == "bf16-mixed"  # what the old fit=false tested in
    evaluated = train(cfg, overrides)
    original = tested_run["record"]
    assert evaluated["trainer_precision"] == original["trainer_precision"] == "32-true"
    for key, value in original["test"].items():
        if key not in TIMING_KEYS:
            assert evaluated["test"][key] == value, key
    assert evaluated["image_size"] == original["image_size"]
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["trainer_precision"] == "32-true"


def test_fit_false_lets_the_command_line_override_the_checkpoints_settings(tested_run, tmp_path):
    from brainseg.module import read_checkpoint
    from brainseg.train import config_of_checkpoint

    saved = read_checkpoint(tested_run["record"]["best_checkpoint"])["hyper_parameters"]["config"]
    overrides = ["fit=false", "runtime.precision=bf16-mixed", "timing.iters=2", "debug=limit"]
    cfg = compose_config([*overrides, f"paths.output_dir={tmp_path / 'eval'}"])
    merged = config_of_checkpoint(cfg, saved, overrides)
    assert merged.runtime.precision == "bf16-mixed" and merged.timing.iters == 2
    assert merged.trainer.limit_test_batches == 2  # a debug= preset's keys count as set
    # the rest is the run's: its trainer, data and network; where it writes is this run's
    assert merged.trainer.accelerator == "cpu" and merged.trainer.precision == "32-true"
    assert merged.data.source.num_slices == 48 and merged.model.base_width == 8
    assert merged.metrics.threshold == THRESHOLD
    assert merged.paths.output_dir == str(tmp_path / "eval")
    assert merged.trainer.default_root_dir == str(tmp_path / "eval")
    assert merged.callbacks.best_checkpoint.dirpath == str(tmp_path / "eval" / "checkpoints")


def test_the_preprocessing_of_a_raw_slice_is_the_caches_then_the_test_transform(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config(["experiment=smoke", "data.image_size=32",
                          "data.source.size=64",  # drawn at 64², trained at 32²: resized
                          f"paths.data_dir={tmp_path / 'data'}"])  # fmt: skip
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    test = datamodule.datasets["test"]
    prepare = SlicePreprocessor.from_config(cfg.data)
    raw = {str(sample.meta["id"]): sample.image for sample in datamodule.source}
    for i in range(4):
        assert raw[test.ids[i]].shape == (64, 64)
        assert torch.equal(prepare(raw[test.ids[i]]), test[i]["image"])
    assert datamodule.datasets["val"].transform is datamodule.preprocessor.transform


def test_mixed_precision_runs_under_autocast_and_keeps_the_networks_dtype():
    seen = []

    def net(images):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return torch.nn.functional.conv2d(images, torch.ones(1, 3, 1, 1))

    images = torch.randn(2, 3, 4, 4)
    assert predict_logits(net, images, "bf16-mixed").dtype == torch.bfloat16
    assert predict_logits(net, images, "32-true").dtype == torch.float32
    assert seen == [torch.bfloat16, None]
    assert parse_precision("16-mixed") == (torch.float16, True)
    with pytest.raises(ValueError, match=r"precision='8-mixed'.*32-true, bf16-mixed"):
        parse_precision("8-mixed")


def test_predictor_states_an_overridden_precision_and_threshold(tested_run):
    ckpt = tested_run["record"]["best_checkpoint"]
    predictor = Predictor.from_checkpoint(ckpt, "cpu", precision="bf16-mixed", threshold=0.6)
    assert predictor.tested_precision == "32-true" and predictor.tested_threshold == THRESHOLD
    described = predictor.describe()
    assert "precision bf16-mixed (the checkpoint was tested in 32-true)" in described
    assert f"threshold 0.6 (the checkpoint's metrics.threshold is {THRESHOLD:g})" in described
    images = torch.randn(2, 3, 64, 64)
    assert predictor.logits(images).dtype == torch.bfloat16
