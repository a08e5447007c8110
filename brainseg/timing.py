"""Inference timing that can be compared across runs: warm-up, device synchronisation, spread."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What a timing depends on: the machine, its load, the Python and torch builds, the GPU."""
    cuda = device == "cuda"
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        # Other work on the machine slows every number; the load average shows it.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
    }


def synchronize(device: torch.device) -> None:
    """Waits for the work queued on `device`: CUDA kernels run asynchronously, and without
    this a clock stops before the work is done. Nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_forward(
    forward: Callable[[torch.Tensor], Any],
    example: torch.Tensor,
    warmup: int = 10,
    iters: int = 50,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> list[float]:
    """Times `forward(example)` and returns one duration in milliseconds per iteration.

    Args:
        forward: the callable to time, e.g. a network in eval mode.
        example: the input, already on the device it is timed on.
        warmup: untimed calls first (cuDNN autotuning, compilation, caches).
        iters: timed calls.
        context: factory of the context each call runs in (e.g. the trainer's autocast).
    """
    if warmup < 0 or iters < 1:
        raise ValueError(
            f"timing.warmup={warmup} and timing.iters={iters}: need warmup >= 0 and iters >= 1"
        )
    with context():
        for _ in range(warmup):
            forward(example)
        synchronize(example.device)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            forward(example)
            synchronize(example.device)
            times.append((time.perf_counter() - start) * 1000.0)
    return times


def summarize(times_ms: list[float]) -> dict[str, float]:
    """Mean, standard deviation, median and 90th percentile of durations in ms."""
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "mean": statistics.fmean(ordered),
        "std": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "median": statistics.median(ordered),
        "p90": p90,
    }


# A faster batch-1 path counts only if its masks match eager's: at most this share of the
# checked pixels may differ (bf16 flips a handful of borderline pixels; a wrong graph flips many).
MASK_TOLERANCE = 1e-4


class CudaGraphForward:
    """`net` at one input shape as a captured CUDA graph: a replay launches the whole network
    at once, which is what batch-1 latency on a GPU waits for. `bf16`: captured under bf16
    autocast; `channels_last`: the input is kept in NHWC layout, as the run keeps it."""

    def __init__(self, net, example: torch.Tensor, bf16: bool, channels_last: bool) -> None:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        # Autocast's cache of cast weights must stay off: a capture replays the casts itself.
        context = lambda: torch.autocast("cuda", torch.bfloat16, enabled=bf16, cache_enabled=False)  # noqa: E731
        self.static = example.contiguous(memory_format=layout).clone()
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(stream), context():
            for _ in range(3):  # cuDNN's choices and the allocator's pools, before capture
                net(self.static)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), context():
            self.out = net(self.static)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.static.copy_(images)
        self.graph.replay()
        return self.out


@torch.inference_mode()
def batch1_masks(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Thresholded masks (logit > 0) of `images`, one image per call, as batch 1 is timed."""
    with context():
        return torch.cat([forward(images[i : i + 1]).float() > 0 for i in range(len(images))])


def choose_path(paths: list[dict[str, Any]], tolerance: float = MASK_TOLERANCE) -> dict[str, Any]:
    """The fastest of the timed `paths` whose masks match eager's.

    Each path is a dict with `name`, `ms` (its mean batch-1 latency) and `mismatch` (the share
    of the checked mask pixels that differ from the eager path's masks). Paths with
    `mismatch > tolerance` are left out; the first path, eager, is the reference and always
    valid. Ties keep the earlier path.
    """
    if not paths:
        raise ValueError("choose_path: no timed path; the eager path is always timed first")
    valid = [paths[0]] + [path for path in paths[1:] if path["mismatch"] <= tolerance]
    return min(valid, key=lambda path: path["ms"])
