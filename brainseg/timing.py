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
