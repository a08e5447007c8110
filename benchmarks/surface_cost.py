"""What the boundary metrics (HD95, ASSD, NSD) add to a test epoch on the CPU, at 128² and 256².

    python benchmarks/surface_cost.py --root ../shared/datasets/figshare-brain-tumor-png256

Writes benchmarks/results/surface_cost_cpu.json. For each size, the cpu preset's U-Net (the
fastest network: the largest relative cost) is tested on the real test split with Lightning,
the time spent in the surface-metric column function measured apart. The untrained network's
predictions are noise, far more boundary than a trained network draws, so the surface metrics
are also timed on near-truth predictions (each mask shifted by 2 px and dilated by 1 px): the
cost a trained network pays. The validation epoch of the same split is timed as well, to judge
whether the metrics fit there too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import ndimage

from brainseg.atomic import write_json
from brainseg.config import compose
from brainseg.metrics import registry
from brainseg.metrics.surface import surface_scores
from brainseg.module import build_module
from brainseg.timing import machine_info

REPO = Path(__file__).resolve().parents[1]


class TimedColumns:
    """Swaps the registry's surface column function for a timed copy while in a `with`."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.slices = 0

    def __call__(self, pred, truth, **kwargs):
        start = time.perf_counter()
        out = registry.surface_columns(pred, truth, **kwargs)
        self.seconds += time.perf_counter() - start
        self.slices += len(pred)
        return out

    def __enter__(self) -> TimedColumns:
        self.saved = dict(registry.COLUMNS)
        registry.COLUMNS.clear()
        for fn, names in self.saved.items():
            registry.COLUMNS[self if fn is registry.surface_columns else fn] = names
        return self

    def __exit__(self, *_) -> None:
        registry.COLUMNS.clear()
        registry.COLUMNS.update(self.saved)


def near_truth(masks: np.ndarray) -> np.ndarray:
    """Predictions a trained network might draw: each mask shifted 2 px and dilated 1 px."""
    shifted = np.roll(masks, 2, axis=-1)
    return np.stack([ndimage.binary_dilation(m) for m in shifted])


def measure(root: str, size: int, data_dir: str, batch: int) -> dict:
    cfg = compose(
        [
            "experiment=cpu",
            "data=folder",
            f"data.root={root}",
            f"data.image_size={size}",
            f"paths.data_dir={data_dir}",
            "data.num_workers=0",
            "pretrained=false",
            "logger=csv",
            "model=unet",
            f"paths.output_dir={data_dir}",
        ]
    )
    pl.seed_everything(0)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)  # the preset's precision
    trainer_cfg.update(logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer = instantiate(trainer_cfg, enable_model_summary=False)
    with TimedColumns() as timed:
        start = time.perf_counter()
        trainer.test(module, datamodule=datamodule, verbose=False)
        test_s = time.perf_counter() - start
    start = time.perf_counter()
    trainer.validate(module, datamodule=datamodule, verbose=False)
    val_s = time.perf_counter() - start
    test = datamodule.subsets == "test"
    truth = datamodule.data.masks[test] > 0
    val_slices = int((datamodule.subsets == "val").sum())
    pred = near_truth(truth)
    start = time.perf_counter()
    for i in range(0, len(truth), batch):
        surface_scores(
            torch.from_numpy(pred[i : i + batch]), torch.from_numpy(truth[i : i + batch])
        )
    near_s = time.perf_counter() - start
    without = test_s - timed.seconds
    per_slice_ms = 1000 * near_s / len(truth)
    return {
        "image_size": size,
        "test_slices": int(len(truth)),
        "val_slices": val_slices,
        "test_epoch_s": test_s,
        "test_epoch_without_surface_s": without,
        "surface_untrained_s": timed.seconds,
        "surface_untrained_share": timed.seconds / without,
        "surface_near_truth_s": near_s,
        "surface_near_truth_ms_per_slice": per_slice_ms,
        "surface_near_truth_share": near_s / without,
        "val_epoch_s": val_s,
        "surface_near_truth_share_of_val": per_slice_ms * val_slices / 1000 / val_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the figshare PNG folder (data=folder)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=16, help="the cpu preset's batch size")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/surface_cost_cpu.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        results = [measure(args.root, size, data_dir, args.batch) for size in args.sizes]
    for row in results:
        print(
            f"{row['image_size']}²: test epoch {row['test_epoch_without_surface_s']:.1f} s, "
            f"surface {100 * row['surface_near_truth_share']:.1f} % (near-truth), "
            f"{100 * row['surface_untrained_share']:.1f} % (untrained network)"
        )
    write_json(args.out, report(results, machine_info("cpu")))


def report(results: list[dict], machine: dict) -> dict:
    """The JSON written: the command, the machine, and one entry per image size."""
    command = (
        "python benchmarks/surface_cost.py --root ../shared/datasets/figshare-brain-tumor-png256"
    )
    return {
        "command": command,
        "by_size": {f"{row['image_size']}px": row for row in results},
        "machine": machine,
    }


if __name__ == "__main__":
    main()
