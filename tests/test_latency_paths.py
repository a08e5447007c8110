"""The test stage's batch-1 latency times the fastest path whose masks match eager's."""

from __future__ import annotations

import pytest
import torch

from brainseg.module import build_module
from brainseg.timing import MASK_TOLERANCE, batch1_masks, choose_path

from .conftest import compose_config


def _path(name: str, ms: float, mismatch: float) -> dict:
    return {"name": name, "ms": ms, "mismatch": mismatch}


def test_the_fastest_path_with_matching_masks_is_chosen():
    paths = [
        _path("eager bf16", 3.0, 0.0),
        _path("cuda-graph fp32", 1.8, 0.0),
        _path("cuda-graph bf16", 0.8, MASK_TOLERANCE / 2),
    ]
    assert choose_path(paths)["name"] == "cuda-graph bf16"


def test_a_faster_path_whose_masks_differ_is_left_out():
    paths = [
        _path("eager fp32", 3.0, 0.0),
        _path("cuda-graph fp32", 2.0, 0.0),
        _path("cuda-graph bf16", 0.5, 10 * MASK_TOLERANCE),
    ]
    assert choose_path(paths)["name"] == "cuda-graph fp32"
    # Eager is the reference: kept even when every other path is slower or wrong.
    assert choose_path([paths[0], _path("cuda-graph bf16", 0.1, 0.5)])["name"] == "eager fp32"
    assert choose_path([paths[0], _path("compiled fp32", 4.0, 0.0)])["name"] == "eager fp32"
    with pytest.raises(ValueError, match="no timed path"):
        choose_path([])


@torch.no_grad()
def test_on_the_cpu_eager_is_timed_and_its_masks_are_the_modules():
    cfg = compose_config(["experiment=smoke", "paths.output_dir=unused", "timing.iters=2"])
    module = build_module(cfg)
    module.timing = {"warmup": 1, "iters": 2}
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    record = module.measure_inference(images)
    assert module.inference_path == "eager fp32"  # no CUDA graph on a CPU
    assert record["inference_ms"] == record["inference_ms_eager"] > 0
    assert {"inference_ms_std", "inference_ms_median", "images_per_s"} <= record.keys()
    paths = module._inference_paths(torch.device("cpu"), None)
    assert [name for name, _, _ in paths] == ["eager fp32"]
    # The timed path's masks are the network's masks on the whole batch.
    module.eval()
    eager = paths[0][1](images[:1])
    masks = batch1_masks(eager, images)
    assert torch.equal(masks, module(images) > 0)
