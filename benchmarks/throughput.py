"""Training, loader and inference throughput of brainseg, side by side with a bare PyTorch loop.

    python benchmarks/throughput.py                       # CPU, the cpu preset, both models
    python benchmarks/throughput.py --device cuda         # study settings, bf16, compiled too
    python benchmarks/throughput.py --data folder \\
        --root ../shared/datasets/figshare-brain-tumor-png256

For each model it measures, in one process:

- training images/s of the full stack (`build_module(cfg)` + the Lightning Trainer as
  `brainseg.train` configures it, logger and checkpointing off, metrics on) and of a bare loop
  (same network weights, loss, optimiser, batch, precision, memory layout) over the same
  batches held in memory, interleaved (bare, brainseg, bare, brainseg, ...), a fixed number of
  steps after warm-up; the ratio brainseg / bare is the framework's cost;
- train-loader samples/s (the data module's loader plus the copy to the device, augmentation
  included: albumentations in the workers with `data.augment_on=loader`, whole batches on the
  device with `device`) for each worker count, against what the bare loop consumes;
- inference: batch-1 latency (median and p90 ms) and batch-N images/s, fp32 and bf16 autocast,
  eager and (with --compile, the default on CUDA) torch.compile.

At the study's settings it projects the wall time of the study's sweep (5 seeds x 80 epochs of
2134 training and 468 validation slices per model): training at brainseg's rate, validation at
the batch-N inference rate in the training precision, both not compiled (the default); the data
loader (which must keep up), each run's start-up and its test are left out.

Writes benchmarks/results/throughput_<device>.json after each model, and prints markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning_fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig, OmegaConf, open_dict

from brainseg.atomic import write_json
from brainseg.module import SegmentationModule, build_module, build_network
from brainseg.timing import summarize, time_forward
from brainseg.train import build_trainer, resolve_channels_last, resolve_precision

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SIZES = {"smoke": 64, "cpu": 128, "study": 256}  # image side of each experiment preset
# The study's protocol, for the projected sweep time: slices per subset of the 3064 real ones
# (patient split, data.split_seed=42), epochs per run, seeds per model.
STUDY_SUBSETS = {"train": 2134, "val": 468}
STUDY_EPOCHS, STUDY_SEEDS = 80, 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--models", nargs="+", default=["unet", "fpn"], choices=("unet", "fpn"))
    p.add_argument(
        "--study",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="study settings (256², width 64, ResNet-50); default: on with cuda",
    )
    p.add_argument(
        "--preset",
        choices=tuple(SIZES),
        default=None,
        help="experiment preset (overrides --study); smoke: 64², seconds, checks the script",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile (inference); default: on with cuda",
    )
    p.add_argument(
        "--compile-train",
        action="store_true",
        help="also measure compiled training (trainer.compile=true vs compiled loop)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        help="training precision: auto (bf16-mixed on CUDA, 32-true on CPU), 32-true or bf16-mixed",
    )
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--data", choices=("synthetic", "folder"), default="synthetic")
    p.add_argument("--root", default=None, help="folder data set (images/, masks/)")
    p.add_argument("--data-dir", default="data", help="paths.data_dir (the cache lives under it)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's (16)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per round")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before each round")
    p.add_argument("--rounds", type=int, default=None, help="bare/brainseg pairs")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument(
        "--augment-on",
        nargs="+",
        default=["loader", "device"],
        choices=("loader", "device"),
        help="augmentation paths of the loader benchmark (data.augment_on)",
    )
    p.add_argument("--loader-batches", type=int, default=None)
    p.add_argument("--latency-iters", type=int, default=None)
    p.add_argument("--infer-batch", type=int, default=64)
    p.add_argument("--infer-iters", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error(
            "--device cuda: no CUDA device is visible; run on a GPU machine or use --device cpu"
        )
    if args.data == "folder" and not args.root:
        p.error("--data folder needs --root, e.g. ../shared/datasets/figshare-brain-tumor-png256")
    args.study = cuda if args.study is None else args.study
    args.preset = args.preset or ("study" if args.study else "cpu")
    args.study = args.preset == "study"
    args.compile = cuda if args.compile is None else args.compile
    # Defaults that keep a CPU run of both models within minutes, and a GPU run stable.
    slow = not cuda and args.study
    defaults = {
        "steps": 3 if slow else (30 if cuda else 10),
        "warmup": 1 if slow else (10 if cuda else 2),
        "loader_batches": 40,
        "rounds": 2 if slow else 3,
        "latency_iters": 3 if slow else (100 if cuda else 20),
        "infer_iters": 1 if slow else (20 if cuda else 3),
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if slow and args.infer_batch == 64:
        args.infer_batch = 4  # a batch of 64 takes minutes at 256² on a CPU
    args.out = args.out or REPO / "benchmarks" / "results" / f"throughput_{args.device}.json"
    return args


def compose_cfg(args: argparse.Namespace, model: str, output_dir: Path) -> DictConfig:
    """The training config of `python -m brainseg.train experiment=<preset> model=<model> ...`."""
    size = SIZES[args.preset]
    overrides = [
        f"experiment={args.preset}",
        f"model={model}",
        "pretrained=false",  # offline; weights do not change the speed
        "logger=csv",
        f"paths.output_dir={output_dir}",
        f"paths.data_dir={args.data_dir}",
        f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
        "trainer.enable_progress_bar=false",
        "trainer.num_sanity_val_steps=0",
    ]
    if args.data == "synthetic":
        # Enough slices for the loader benchmark to run several batches per epoch.
        overrides += [
            "data=synthetic",
            f"data.image_size={size}",
            f"data.source.size={size}",
            "data.source.num_slices=256",
            "data.source.num_patients=32",
        ]
    else:
        overrides += ["data=folder", f"data.root={Path(args.root).resolve()}"]
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.trainer.channels_last = {"on": True, "off": False}.get(args.channels_last, "auto")
        cfg.trainer.channels_last = resolve_channels_last(
            cfg.trainer.channels_last, cfg.trainer.accelerator
        )
        cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    OmegaConf.resolve(cfg)  # parts (model, data) are built on their own below
    return cfg


def machine_info(device: str) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        # Other work on the machine slows every number here; the load average shows it.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "cuda": torch.version.cuda if device == "cuda" else None,
    }
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(
    precision: str, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager]:
    if precision.startswith("bf16"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("32"):
        return contextlib.nullcontext
    raise ValueError(f"precision {precision!r} is not benchmarked; use 32-true or bf16-mixed")


def memory_batches(cfg: DictConfig, count: int, device: torch.device) -> list[dict[str, Any]]:
    """`count` augmented training batches from the data module, moved to `device` once."""
    dm = instantiate(cfg.data, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    batches: list[dict[str, Any]] = []
    while len(batches) < count:
        for batch in dm.train_dataloader():
            batches.append(_transfer(dm, batch, device))
            if len(batches) == count:
                break
    return batches


class _StepTimer(pl.Callback):
    """Clock from the end of step `warmup - 1` to the end of the last step (whole cycles)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.last = warmup, warmup + steps - 1
        self.start = self.stop = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx in (self.warmup - 1, self.last):
            _sync(pl_module.device)
            now = time.perf_counter()
            if batch_idx == self.last:
                self.stop = now
            else:
                self.start = now


def brainseg_round(
    cfg: DictConfig, module: SegmentationModule, batches: list, warmup: int, steps: int
) -> float:
    """Seconds of `steps` training steps through the Lightning Trainer, after `warmup`."""
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        run_cfg.callbacks = None
        run_cfg.trainer.update(
            max_epochs=1,
            max_steps=warmup + steps,
            enable_checkpointing=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
    trainer = build_trainer(run_cfg, loggers=[])
    timer = _StepTimer(warmup, steps)
    trainer.callbacks.append(timer)
    # batch_size=None: the loader yields the prepared batches as they are.
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.stop - timer.start


class BareLoop:
    """The same training step written as a plain PyTorch loop."""

    def __init__(
        self, cfg: DictConfig, module: SegmentationModule, device: torch.device, compiled: bool
    ) -> None:
        self.net = build_network(cfg.model, load_pretrained=False)
        self.net.load_state_dict(module.net.state_dict())
        self.net.to(device).train()
        self.channels_last = bool(cfg.trainer.channels_last)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.net) if compiled else self.net
        self.loss = instantiate(cfg.loss).to(device)
        self.optimizer = instantiate(cfg.optimizer)(params=self.net.parameters())
        self.autocast = _autocast(str(cfg.trainer.precision), device)
        self.device = device

    def step(self, batch: dict[str, Any]) -> None:
        images = batch["image"]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            loss = self.loss(self.forward(images), batch["mask"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def round(self, batches: list, warmup: int, steps: int) -> float:
        for batch in batches[:warmup]:
            self.step(batch)
        _sync(self.device)
        start = time.perf_counter()
        for batch in batches[warmup : warmup + steps]:
            self.step(batch)
        _sync(self.device)
        return time.perf_counter() - start


def train_throughput(
    cfg: DictConfig, batches: list, args: argparse.Namespace, device: torch.device, compiled: bool
) -> dict[str, Any]:
    """Interleaved rounds of the bare loop and brainseg; images/s of each and their ratio."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.trainer.compile = compiled
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, load_pretrained=False)
    bare = BareLoop(cfg, module, device, compiled)
    batch_size = batches[0]["image"].shape[0]
    times: dict[str, list[float]] = {"bare": [], "brainseg": []}
    for _ in range(args.rounds):
        times["bare"].append(bare.round(batches, args.warmup, args.steps))
        times["brainseg"].append(brainseg_round(cfg, module, batches, args.warmup, args.steps))
    rate = {k: batch_size * args.steps * len(v) / sum(v) for k, v in times.items()}
    return {
        "compiled": compiled,
        "bare_images_per_s": rate["bare"],
        "brainseg_images_per_s": rate["brainseg"],
        "ratio": rate["brainseg"] / rate["bare"],
        "round_s": times,
    }


def loader_throughput(
    cfg: DictConfig, workers: int, batches: int, augment_on: str, device: torch.device
) -> dict[str, Any]:
    """Samples/s of the training loader, augmented and on `device`, in steady state.

    Each batch is copied to the device as Lightning does it and passed through the data module's
    `on_after_batch_transfer` (which augments there with augment_on=device). The batches the
    workers prefetch while the first one is made are skipped: they would count work done before
    the clock started.
    """
    dm = instantiate(cfg.data, num_workers=workers, persistent_workers=True, augment_on=augment_on)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first_batch_s = time.perf_counter() - start
    for _ in range(2 * workers):  # DataLoader's default prefetch_factor is 2 per worker
        iterator = _next_batch(loader, iterator)[1]
    samples, t0 = 0, time.perf_counter()
    for _ in range(batches):
        batch, iterator = _next_batch(loader, iterator)
        batch = _transfer(dm, batch, device)
        samples += batch["image"].shape[0]
    _sync(device)
    elapsed = time.perf_counter() - t0
    del iterator, loader
    return {
        "augment_on": augment_on,
        "workers": workers,
        "samples_per_s": samples / elapsed,
        "first_batch_s": first_batch_s,
    }


def _transfer(dm, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A loader batch as the training step gets it: through the data module's transfer hooks
    and moved as Lightning moves it (augmented there with augment_on=device)."""
    batch = dm.on_before_batch_transfer(batch, 0)
    return dm.on_after_batch_transfer(move_data_to_device(batch, device), 0)


def _next_batch(loader, iterator):
    try:
        return next(iterator), iterator
    except StopIteration:  # another epoch; persistent workers start it without a delay
        iterator = iter(loader)
        return next(iterator), iterator


@torch.no_grad()
def inference(
    cfg: DictConfig,
    module: SegmentationModule,
    batches: list,
    args: argparse.Namespace,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Batch-1 latency and batch-N throughput per precision and compile mode."""
    net = module.net.to(device).eval()
    if cfg.trainer.channels_last:
        net.to(memory_format=torch.channels_last)
    images = torch.cat([b["image"] for b in batches])
    while images.shape[0] < args.infer_batch:
        images = torch.cat([images, images])
    one, many = images[:1], images[: args.infer_batch]
    if cfg.trainer.channels_last:
        one, many = (x.contiguous(memory_format=torch.channels_last) for x in (one, many))
    rows = []
    modes = [False, True] if args.compile else [False]
    for compiled in modes:
        # CUDA graphs (reduce-overhead) remove the launch cost that dominates batch 1.
        mode = "reduce-overhead" if device.type == "cuda" else None
        forward = torch.compile(net, mode=mode) if compiled else net
        for precision in ("32-true", "bf16-mixed"):
            context = _autocast(precision, device)
            latency = summarize(
                time_forward(
                    forward,
                    one,
                    warmup=max(3, args.latency_iters // 5),
                    iters=args.latency_iters,
                    context=context,
                )
            )
            batched = summarize(
                time_forward(forward, many, warmup=1, iters=args.infer_iters, context=context)
            )
            rows.append(
                {
                    "compiled": compiled,
                    "precision": precision,
                    "batch1_ms_median": latency["median"],
                    "batch1_ms_p90": latency["p90"],
                    "batch": int(many.shape[0]),
                    "batch_images_per_s": many.shape[0] * 1000.0 / batched["median"],
                }
            )
        torch._dynamo.reset()
    return rows


def bench_model(args: argparse.Namespace, model: str, device: torch.device) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(args, model, Path(tmp) / "run")
        print(
            f"== {model}: {cfg.data.image_size}², batch {cfg.data.batch_size}, "
            f"{cfg.trainer.precision}, channels_last={cfg.trainer.channels_last}",
            flush=True,
        )
        batches = memory_batches(cfg, args.warmup + args.steps, device)
        training = [train_throughput(cfg, batches, args, device, compiled=False)]
        if args.compile_train:
            training.append(train_throughput(cfg, batches, args, device, compiled=True))
        for row in training:
            print(
                f"   train compiled={row['compiled']}: bare {row['bare_images_per_s']:.1f}, "
                f"brainseg {row['brainseg_images_per_s']:.1f} img/s, "
                f"ratio {row['ratio']:.3f}",
                flush=True,
            )
        consumption = training[0]["bare_images_per_s"]
        loaders = []
        for augment_on in args.augment_on:
            for workers in args.workers:
                row = loader_throughput(cfg, workers, args.loader_batches, augment_on, device)
                row["ratio_to_consumption"] = row["samples_per_s"] / consumption
                print(
                    f"   loader augment_on={augment_on} workers={workers}: "
                    f"{row['samples_per_s']:.1f} samples/s, "
                    f"{row['ratio_to_consumption']:.2f}x consumption",
                    flush=True,
                )
                loaders.append(row)
        module = build_module(cfg, load_pretrained=False)
        infer = inference(cfg, module, batches, args, device)
        return {
            "projected_run_s": (
                projected_run_s(training[0], infer, str(cfg.trainer.precision))
                if args.study
                else None
            ),
            "model": model,
            "params": sum(p.numel() for p in module.net.parameters()),
            "settings": {
                "preset": args.preset,
                "image_size": int(cfg.data.image_size),
                "in_channels": int(cfg.data.in_channels),
                "batch_size": int(cfg.data.batch_size),
                "precision": str(cfg.trainer.precision),
                "channels_last": bool(cfg.trainer.channels_last),
                "model": OmegaConf.to_container(cfg.model, resolve=True),
                "data": args.data,
                "steps": args.steps,
                "warmup": args.warmup,
                "rounds": args.rounds,
            },
            "train": training,
            "loader": loaders,
            "inference": infer,
        }


def projected_run_s(train: dict[str, Any], infer: list[dict[str, Any]], precision: str) -> float:
    """Seconds of one run of the study's protocol at the measured rates (see the module doc),
    not compiled, as `python -m brainseg.train` runs by default."""
    evaluation = next(
        row["batch_images_per_s"]
        for row in infer
        if row["compiled"] == train["compiled"] and row["precision"] == precision
    )
    epoch_s = STUDY_SUBSETS["train"] / train["brainseg_images_per_s"]
    epoch_s += STUDY_SUBSETS["val"] / evaluation
    return STUDY_EPOCHS * epoch_s


def markdown(results: dict[str, Any]) -> str:
    training, loaders, inference = [], [], []
    for r in results["models"]:
        s = r["settings"]
        for t in r["train"]:
            training.append(
                [
                    r["model"] + (" (compiled)" if t["compiled"] else ""),
                    f"{s['image_size']}², batch {s['batch_size']}",
                    s["precision"],
                    f"{t['bare_images_per_s']:.2f}",
                    f"{t['brainseg_images_per_s']:.2f}",
                    f"{t['ratio']:.3f}",
                ]
            )
        for x in r["loader"]:
            loaders.append(
                [
                    r["model"],
                    x["augment_on"],
                    str(x["workers"]),
                    f"{x['samples_per_s']:.0f}",
                    f"{x['ratio_to_consumption']:.1f}x",
                ]
            )
        for i in r["inference"]:
            inference.append(
                [
                    r["model"],
                    "yes" if i["compiled"] else "no",
                    i["precision"],
                    f"{i['batch1_ms_median']:.1f} / {i['batch1_ms_p90']:.1f}",
                    f"{i['batch_images_per_s']:.1f} (batch {i['batch']})",
                ]
            )
    lines = _table(
        ["model", "input", "precision", "bare img/s", "brainseg img/s", "ratio"], training
    )
    lines += _table(
        ["model", "augment_on", "workers", "loader samples/s", "loader / consumption"], loaders
    )
    lines += _table(
        ["model", "compiled", "precision", "batch-1 ms (median / p90)", "batch-N img/s"],
        inference,
    )
    if results.get("projected_study_sweep_h") is not None:
        runs = ", ".join(
            f"{r['model']} {r['projected_run_s'] / 60:.1f} min" for r in results["models"]
        )
        lines.append(
            f"Projected study sweep ({STUDY_SEEDS} seeds x {STUDY_EPOCHS} epochs per model, at "
            f"these rates): {results['projected_study_sweep_h']:.2f} h (one run: {runs})."
        )
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, then an empty line."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":  # as brainseg.train sets it on CUDA, for both loops
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    results: dict[str, Any] = {
        "command": "python benchmarks/throughput.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine_info(args.device),
        "models": [],
    }
    started = time.time()
    for model in args.models:
        results["models"].append(bench_model(args, model, device))
        results["wall_time_s"] = time.time() - started
        if args.study:  # the study's settings: its sweep, projected
            results["projected_study_sweep_h"] = (
                STUDY_SEEDS * sum(m["projected_run_s"] for m in results["models"]) / 3600
            )
        write_json(args.out, results)  # after each model: a cut-off run keeps what it measured
    table = markdown(results)
    print(f"\n{table}\n\nwrote {args.out} in {results['wall_time_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
