"""Validation and test in large batches (data.eval_batch_size) change no metric."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from brainseg.module import build_module
from brainseg.train import build_trainer

from .conftest import compose_config


def evaluate(tmp_path, eval_batch_size: int) -> tuple[dict, dict, list]:
    cfg = compose_config(
        [
            "experiment=smoke",
            f"paths.output_dir={tmp_path / str(eval_batch_size)}",
            f"paths.data_dir={tmp_path / 'data'}",
            f"data.eval_batch_size={eval_batch_size}",
            "timing.iters=1",
            "timing.warmup=0",
            "data.source.num_slices=160",  # 24 test slices: several batches of 8
            "data.source.num_patients=20",
            "logger=none",
            "trainer.enable_progress_bar=false",
        ]
    )
    torch.manual_seed(0)
    module = build_module(cfg, load_pretrained=False)
    dm = instantiate(cfg.data)
    trainer = build_trainer(cfg, loggers=[])
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    return val, test, module.test_rows


def test_eval_batch_size_8_and_64_give_the_same_metrics(tmp_path):
    val8, test8, rows8 = evaluate(tmp_path, 8)
    val64, test64, rows64 = evaluate(tmp_path, 64)
    assert (
        len(rows8) > 16 and rows8 == rows64
    )  # per-image Dice, precision, recall, lesions: image by image
    timings = {"inference_ms", "inference_ms_std", "inference_ms_median", "inference_ms_eager"}
    timings |= {"images_per_s"}
    # The Dice loss pools its sums over a batch (loss.per_image=false): the loss, not a
    # metric, depends on the batch size. Everything else, pooled sums included, must not.
    for full8, full64 in ((val8, val64), (test8, test64)):
        assert any(key.endswith("loss") for key in full8)
        keys = {
            k for k in full8 if not k.endswith("loss") and k.removeprefix("test/") not in timings
        }
        assert {"val/dice", "test/dice"} & keys and keys == {
            k for k in full64 if not k.endswith("loss") and k.removeprefix("test/") not in timings
        }
        for key in sorted(keys):
            assert full8[key] == pytest.approx(full64[key], rel=1e-6, abs=1e-7), key
