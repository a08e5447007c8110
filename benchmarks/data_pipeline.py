"""Data pipeline benchmark: cache build (cold), cache load (warm), train-loader throughput.

    python benchmarks/data_pipeline.py --root ../shared/datasets/figshare-brain-tumor-png256

Writes benchmarks/results/data_pipeline.json. Throughput is measured on the training loader
(the training augmentation as configured, `data.augment`) after its first batch, so worker
start-up is reported apart from the steady rate.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import albumentations
import numpy as np
import torch
from omegaconf import OmegaConf

from brainseg.atomic import write_json
from brainseg.config import compose
from brainseg.data import BrainTumorDataModule
from brainseg.data.cache import build_cache, load_cache
from brainseg.data.folder import FolderSource
from brainseg.timing import machine_info

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict:
    # Main-process collation (num_workers=0) runs torch.stack on torch_threads threads; on a
    # busy machine they contend, which the load average shows.
    return {
        **machine_info("cpu"),
        "albumentations": albumentations.__version__,
        "numpy": np.__version__,
    }


def loader_throughput(dm: BrainTumorDataModule, batches: int, time_cap: float) -> dict:
    start = time.perf_counter()
    iterator = iter(dm.train_dataloader())
    next(iterator)
    first = time.perf_counter() - start
    count, t0 = 0, time.perf_counter()
    for _ in range(batches - 1):
        try:
            batch = next(iterator)
        except StopIteration:  # one epoch is shorter than the batches asked for
            iterator = iter(dm.train_dataloader())
            batch = next(iterator)
        count += len(batch["id"])
        if time.perf_counter() - t0 > time_cap:
            break
    elapsed = time.perf_counter() - t0
    del iterator
    return {
        "first_batch_s": round(first, 3),
        "batches": count // dm.batch_size,
        "seconds": round(elapsed, 2),
        "samples_per_s": round(count / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="../shared/datasets/figshare-brain-tumor-png256")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per worker setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "data_pipeline.json")
    )
    args = parser.parse_args()
    load_at_start = round(os.getloadavg()[0], 2)

    # As a training run composes it: the key moves with the config tree, not with this script.
    data_cfg = compose(["data=folder", f"data.root={args.root}"]).data
    augment = OmegaConf.to_container(data_cfg.augment)
    source = FolderSource(args.root)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        path = build_cache(source, args.image_size, cache_dir)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_cache(source, args.image_size, cache_dir)  # finds the cache: key + stat only
        lookup = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = load_cache(path)
        warm = time.perf_counter() - t0
        result = {
            "data": {"root": args.root, "slices": len(data), "image_size": args.image_size},
            "cache": {
                "build_cold_s": round(cold, 2),
                "lookup_existing_s": round(lookup, 3),
                "load_warm_s": round(warm, 3),
                "size_mb": round(path.stat().st_size / 1e6, 1),
            },
            "train_loader": {
                "batch_size": args.batch_size,
                "augment": augment,
                "by_num_workers": {},
            },
        }
        print(json.dumps(result["cache"]))
        for workers in args.workers:
            dm = BrainTumorDataModule(
                source,
                image_size=args.image_size,
                cache_dir=cache_dir,
                batch_size=args.batch_size,
                num_workers=workers,
                persistent_workers=False,
                augment=augment,
            )
            dm.setup("fit")
            stats = loader_throughput(dm, args.batches, args.time_cap)
            result["train_loader"]["by_num_workers"][str(workers)] = stats
            print(f"num_workers={workers}: {json.dumps(stats)}")
            if workers == 0:
                # Workers run torch on one thread; the same in the main process shows how much
                # of the num_workers=0 rate is lost to torch threads contending in collation.
                threads = torch.get_num_threads()
                torch.set_num_threads(1)
                stats = loader_throughput(dm, args.batches, args.time_cap)
                torch.set_num_threads(threads)
                result["train_loader"]["by_num_workers"]["0_torch_threads_1"] = stats
                print(f"num_workers=0, torch threads 1: {json.dumps(stats)}")
    result["machine"] = {**machine(), "load_average_1m_at_start": load_at_start}
    result["command"] = "python benchmarks/data_pipeline.py --root " + args.root
    out = write_json(args.out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
