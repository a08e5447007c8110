"""Training, loader and inference throughput of brainseg, side by side with a bare PyTorch loop.

    python benchmarks/throughput.py                 # CPU, the cpu preset, both models
    python benchmarks/throughput.py --device cuda   # the study preset, bf16, compiled too
    python benchmarks/throughput.py --data folder --root <images/ and masks/>

Settings are what `brainseg-train experiment=<preset> model=<model>` composes, the flags as
overrides. Measured per model: training images/s of brainseg (`build_module`, `build_trainer`;
no logger, callbacks or checkpoints) and of a bare loop (same weights, loss, optimiser,
precision, layout) on the same batches in memory, in alternating rounds (brainseg / bare: the
framework's cost), and where a step's time goes (forward, backward, optimizer, metrics, and the
rest: Lightning's loop, logging, hooks); whole training steps with the data module's batches,
drawn on the device (data.on_device) or by the loader; on CUDA the host syncs per step;
train-loader samples/s per worker count and augmentation path, the copy to the device included;
batch-1 latency (eager, CUDA graph, compiled; fp32 and bf16, with the share of mask pixels that
differ from eager fp32) and batch-N images/s.

With the study preset it projects the study's sweep (--seeds runs of trainer.max_epochs epochs
per model; start-up, loader and test left out). Writes benchmarks/results/throughput_<device>.json
after each model; benchmarks/render_docs.py renders it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.utilities.apply_func import move_data_to_device
from omegaconf import DictConfig, OmegaConf

from brainseg.atomic import write_json
from brainseg.config import CONF_DIR, compose
from brainseg.models import build_network, list_networks
from brainseg.module import SegmentationModule, build_module, make_optimizer
from brainseg.timing import (
    CudaGraphForward,
    batch1_masks,
    machine_info,
    summarize,
    synchronize,
    time_forward,
)
from brainseg.train import build_trainer

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
# Defaults that keep a GPU run stable and a CPU run within minutes (at the study's 256², where
# a batch of 64 takes minutes on a CPU, within an hour).
DEFAULTS = {
    "cuda": {"steps": 30, "warmup": 10, "rounds": 3, "infer_batch": 64, "infer_iters": 20},
    "cpu": {"steps": 10, "warmup": 2, "rounds": 3, "infer_batch": 64, "infer_iters": 3},
    "cpu-study": {"steps": 3, "warmup": 1, "rounds": 2, "infer_batch": 4, "infer_iters": 1},
}
FIGSHARE_SLICES = 3064  # the figshare set's (brainseg/data/figshare.py), which the study splits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--models", nargs="+", default=["unet", "fpn"], choices=list_networks())
    p.add_argument("--preset", choices=PRESETS, help="default: study with cuda, else cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="default: on cuda")
    p.add_argument("--compile-train", action="store_true", help="also runtime.compile=true")
    p.add_argument("--compile-mode", help="runtime.compile_mode of the compiled training step")
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="only the training rate with runtime.compile=true (brainseg and bare compiled)",
    )
    p.add_argument(
        "--precision", choices=("auto", "32-true", "bf16-mixed"), help="default: the preset's"
    )
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--data", choices=("synthetic", "folder"), default="synthetic")
    p.add_argument("--root", help="the folder data set (images/, masks/)")
    p.add_argument("--data-dir", help="paths.data_dir (the cache lives under it)")
    p.add_argument("--batch-size", type=int, help="default: the preset's")
    p.add_argument("--steps", type=int, help="timed training steps per round")
    p.add_argument("--warmup", type=int, help="untimed steps before each round")
    p.add_argument("--rounds", type=int, help="bare/brainseg pairs")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--augment-on", nargs="+", default=["loader", "device"])
    p.add_argument("--loader-batches", type=int, default=40)
    p.add_argument("--latency-iters", type=int, help="default: the preset's timing.iters")
    p.add_argument("--infer-batch", type=int)
    p.add_argument("--infer-iters", type=int)
    p.add_argument("--seeds", type=int, default=5, help="runs per model (README: seed=range(5))")
    p.add_argument(
        "--pipeline",
        nargs="*",
        default=["device", "loader"],
        choices=("device", "loader"),
        help="whole steps with the data module's batches: on the device, or by the loader",
    )
    p.add_argument("--pipeline-workers", type=int, default=2, help="loader workers there")
    p.add_argument(
        "--paths",
        nargs="+",
        default=["eager", "graph", "compiled"],
        choices=("eager", "graph", "compiled"),
        help="batch-1 paths to time (graph: CUDA only; compiled: with --compile)",
    )
    p.add_argument("--latency-only", action="store_true", help="only the inference timing")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible; run on a GPU machine or --device cpu")
    if args.data == "folder" and not args.root:
        p.error("--data folder needs --root, e.g. ../shared/datasets/figshare-brain-tumor-png256")
    args.preset = args.preset or ("study" if cuda else "cpu")
    args.compile = cuda if args.compile is None else args.compile
    kind = "cpu-study" if not cuda and args.preset == "study" else args.device
    for key, value in DEFAULTS[kind].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or REPO / "benchmarks" / "results" / f"throughput_{args.device}.json"
    return args


def compose_cfg(args: argparse.Namespace, model: str, out: Path, compiled: bool) -> DictConfig:
    """`brainseg-train experiment=<preset> model=<model>` with the flags' runtime settings, and
    a Trainer that stops after one round, without logger, callbacks, checkpoints or sanity check."""
    layout = {"on": "true", "off": "false"}.get(args.channels_last, "auto")
    overrides = [f"experiment={args.preset}", f"model={model}", f"paths.output_dir={out}"]
    overrides += ["pretrained=false"]  # offline; the weights do not change the speed
    overrides += [f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}"]
    overrides += [f"runtime.channels_last={layout}"]
    overrides += [f"runtime.precision={args.precision}"] if args.precision else []
    overrides += [f"runtime.compile={compiled}", f"+trainer.max_steps={args.warmup + args.steps}"]
    overrides += (
        [f"runtime.compile_mode={args.compile_mode}"] if compiled and args.compile_mode else []
    )
    # The run's callbacks but the checkpoints and the learning-rate monitor (no logger here).
    overrides += ["logger=none", "~callbacks.best_checkpoint", "~callbacks.last_checkpoint"]
    overrides += ["~callbacks.learning_rate_monitor", "+trainer.enable_checkpointing=false"]
    overrides += ["+trainer.enable_model_summary=false", "trainer.enable_progress_bar=false"]
    overrides += ["trainer.num_sanity_val_steps=0"]
    if args.data == "synthetic":  # enough slices for the loader to run many batches per epoch
        overrides += ["data=synthetic", "data.source.size=${data.image_size}"]
        overrides += ["data.source.num_slices=256", "data.source.num_patients=32"]
    else:
        overrides += ["data=folder", f"data.root={Path(args.root).resolve()}"]
    overrides += [f"paths.data_dir={args.data_dir}"] if args.data_dir else []
    overrides += [f"data.batch_size={args.batch_size}"] if args.batch_size else []
    return compose(overrides)


def _autocast(precision: str, device: torch.device):
    if precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"precision {precision!r} is not benchmarked; use 32-true or bf16-mixed")
    return lambda: torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16-mixed")


def _endless(loader) -> Iterator[Any]:
    """The loader's batches, epoch after epoch (persistent workers start the next at once)."""
    return itertools.chain.from_iterable(itertools.repeat(loader))


def _transfer(dm, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A loader batch as the training step gets it: through the data module's hooks and moved
    as Lightning moves it (augmented there with augment_on=device)."""
    batch = dm.on_before_batch_transfer(batch, 0)
    return dm.on_after_batch_transfer(move_data_to_device(batch, device), 0)


def _print(what: str, row: dict[str, Any]) -> None:
    """One measurement as a line, as soon as it is made (a run cut off keeps its log)."""
    pairs = (f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
    print(f"   {what}: " + ", ".join(pairs), flush=True)


class _StepTimer(pl.Callback):
    """Clock at the end of step `warmup - 1` and of step `last` (whole cycles in between,
    across epochs: the steps are counted here, not by the epoch's batch index)."""

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last, self.times, self.step = warmup, last, {}, -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step += 1
        if self.step in (self.warmup - 1, self.last):
            synchronize(pl_module.device)
            self.times[self.step] = time.perf_counter()


def brainseg_round(cfg: DictConfig, module: SegmentationModule, batches: list, warmup: int):
    """Seconds of the steps after `warmup` through the Trainer brainseg.train builds."""
    trainer = build_trainer(cfg, loggers=[])
    timer = _StepTimer(warmup, len(batches) - 1)
    trainer.callbacks.append(timer)
    # batch_size=None: the loader yields the prepared batches as they are.
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return timer.times[timer.last] - timer.times[warmup - 1]


def bare_round(cfg: DictConfig, module: SegmentationModule, batches: list, warmup: int, device):
    """Seconds of the same steps after `warmup` in a plain PyTorch loop, on a copy of the net
    (on `device`: Lightning moves the module back to the CPU after each fit)."""
    net = build_network(OmegaConf.to_container(cfg.model, resolve=True), load_pretrained=False)
    net.load_state_dict(module.net.state_dict())
    layout = torch.channels_last if module.channels_last else torch.contiguous_format
    net.to(device, memory_format=layout).train()
    forward = torch.compile(net, mode=module.compile_mode) if module.compiled else net
    loss_fn = instantiate(cfg.loss).to(device)
    # The optimizer brainseg makes (fused on CUDA): the comparison is of everything else.
    optimizer = make_optimizer(instantiate(cfg.optimizer), net.parameters(), device)
    autocast = _autocast(str(cfg.trainer.precision), device)
    for i, batch in enumerate(batches):
        if i == warmup:
            synchronize(device)
            start = time.perf_counter()
        with autocast():
            loss = loss_fn(forward(batch["image"].contiguous(memory_format=layout)), batch["mask"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - start


def train_throughput(cfg: DictConfig, batches: list, args: argparse.Namespace, device) -> dict:
    """Interleaved rounds of the bare loop and brainseg; images/s of each (from its median
    round) and their ratio."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, load_pretrained=False)
    times: dict[str, list[float]] = {"bare": [], "brainseg": []}
    for _ in range(args.rounds):
        times["bare"].append(bare_round(cfg, module, batches, args.warmup, device))
        times["brainseg"].append(brainseg_round(cfg, module, batches, args.warmup))
    # The median round: one round stalled by the machine (a shared 2-core CPU stalls for
    # seconds) does not decide the ratio; every round's time is kept in `round_s`.
    rate = {
        k: len(batches[0]["image"]) * args.steps / statistics.median(v) for k, v in times.items()
    }
    row = {"compiled": module.compiled, "bare_images_per_s": rate["bare"]}
    row |= {"brainseg_images_per_s": rate["brainseg"], "ratio": rate["brainseg"] / rate["bare"]}
    row["rate_from"] = "median round"
    _print("train", row)
    return {**row, "round_s": times}


def step_breakdown(cfg: DictConfig, module: SegmentationModule, batches: list, args, device):
    """Milliseconds per step of each part of brainseg's training step, timed apart (the device
    synchronised around each part): forward (with the loss), backward, optimizer, metrics."""
    module.to(device)
    module.setup("fit")  # the layout, as the Trainer sets it up
    module.train()
    optimizer = make_optimizer(module.optimizer_factory, module.net.parameters(), device)
    autocast = _autocast(str(cfg.trainer.precision), device)
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "metrics": []}

    def timed(part: str, work):
        synchronize(device)
        start = time.perf_counter()
        result = work()
        synchronize(device)
        if timing:
            parts[part].append((time.perf_counter() - start) * 1e3)
        return result

    for i, batch in enumerate(batches):
        timing = i >= args.warmup
        with autocast():
            logits = timed("forward", lambda b=batch: module(b["image"]))
            loss = timed("forward", lambda b=batch, x=logits: module.loss(x, b["mask"]))
        metrics = module.train_metrics
        timed("metrics", lambda b=batch, x=logits, m=metrics: m.update(x.detach(), b["mask"]))
        timed("backward", loss.backward)
        timed("optimizer", lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)))
    module.train_metrics.reset()
    steps = len(batches) - args.warmup
    # forward holds two timed parts per step (network, loss): per step, their sum
    return {f"{part}_ms": sum(times) / steps for part, times in parts.items()}


def pipeline_throughput(cfg: DictConfig, args, device, on_device: bool) -> dict[str, Any]:
    """Images/s of whole training steps through the Trainer with the data module's batches,
    augmented on the device: drawn there (data.on_device) or by the loader's workers; epoch
    ends included (validation off), as many epochs as the steps take."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    workers = 0 if on_device else args.pipeline_workers
    dm = instantiate(cfg.data, augment_on="device", on_device=on_device, num_workers=workers)
    module = build_module(cfg, load_pretrained=False)
    trainer = build_trainer(cfg, loggers=[])
    trainer.limit_val_batches = 0
    last = args.warmup + args.steps - 1
    timer = _StepTimer(args.warmup, last)
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=dm)
    seconds = timer.times[last] - timer.times[args.warmup - 1]
    row = {"on_device": on_device, "workers": workers}
    row |= {"images_per_s": cfg.data.batch_size * args.steps / seconds}
    _print("pipeline", row)
    return row


# What CUDA's sync debug mode warns on each host sync (c10/cuda).
SYNC_WARNING = "called a synchronizing CUDA operation"


def host_syncs(cfg: DictConfig, args, device) -> dict[str, Any]:
    """Host syncs per training step (CUDA's sync debug mode), data on the device, after warm-up;
    and where the first few come from."""
    dm = instantiate(cfg.data, augment_on="device", on_device=True, num_workers=0)
    module = build_module(cfg, load_pretrained=False)
    trainer = build_trainer(cfg, loggers=[])
    trainer.limit_val_batches = 0
    counted: list[str] = []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == args.warmup:
                torch.cuda.set_sync_debug_mode("warn")

    trainer.callbacks.append(Watch())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(module, datamodule=dm)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # Only sync debug mode's own warnings: other warnings may mention synchronising too.
    messages = [str(w.message) for w in caught]
    counted = [message.splitlines()[0][:160] for message in messages if SYNC_WARNING in message]
    row = {"steps": args.steps, "syncs": len(counted), "syncs_per_step": len(counted) / args.steps}
    _print("host syncs", row)
    return {**row, "first": counted[:5]}


def loader_throughput(cfg: DictConfig, workers: int, batches: int, augment_on: str, device):
    """Samples/s of the training loader, augmented and on `device`, in steady state: without
    the batches the workers prefetch before the clock starts."""
    dm = instantiate(cfg.data, num_workers=workers, persistent_workers=True, augment_on=augment_on)
    dm.prepare_data()
    dm.setup("fit")
    stream = _endless(dm.train_dataloader())
    start = time.perf_counter()
    next(stream)
    first_batch_s = time.perf_counter() - start
    for _ in range(2 * workers):  # made while the first one was (prefetch_factor 2 per worker)
        next(stream)
    start = time.perf_counter()
    samples = sum(len(_transfer(dm, next(stream), device)["image"]) for _ in range(batches))
    synchronize(device)
    rate = samples / (time.perf_counter() - start)
    row = {"augment_on": augment_on, "workers": workers, "samples_per_s": rate}
    return {**row, "first_batch_s": first_batch_s}


@torch.no_grad()
def inference(cfg: DictConfig, module: SegmentationModule, batches: list, args, device) -> list:
    """Batch-1 latency and batch-N throughput per path (eager; a CUDA graph and compiled on
    CUDA) and precision, with the share of mask pixels that differ from eager fp32's."""
    layout = torch.channels_last if module.channels_last else torch.contiguous_format
    net = module.net.to(device, memory_format=layout).eval()
    images = torch.cat([b["image"] for b in batches]).contiguous(memory_format=layout)
    images = images.repeat(-(-args.infer_batch // len(images)), 1, 1, 1)  # at least infer_batch
    one, many = images[:1], images[: args.infer_batch]
    checked = images[: min(8, len(images))]  # the slices whose masks are compared
    iters = args.latency_iters or cfg.timing.iters
    paths = [p for p in args.paths if p != "graph" or device.type == "cuda"]
    paths = [p for p in paths if p != "compiled" or args.compile]
    reference = batch1_masks(net, checked, _autocast("32-true", device))
    rows = []
    for path in paths:
        for precision in ("32-true", "bf16-mixed"):
            context = _autocast(precision, device)
            row: dict[str, Any] = {"path": path, "compiled": path == "compiled"}
            row["precision"] = precision
            try:
                if path == "graph":
                    bf16 = precision == "bf16-mixed"
                    forward = CudaGraphForward(net, one, bf16, module.channels_last)
                elif path == "compiled":
                    # CUDA graphs (reduce-overhead) remove the launch cost that rules batch 1.
                    mode = "reduce-overhead" if device.type == "cuda" else None
                    forward = torch.compile(net, mode=mode)
                else:
                    forward = net
                latency = summarize(time_forward(forward, one, cfg.timing.warmup, iters, context))
                masks = batch1_masks(forward, checked, context)
            except Exception as error:  # one path failing leaves the others measured
                row["error"] = f"{type(error).__name__}: {error}"[:300]
                rows.append(row)
                _print("inference", row)
                continue
            row |= {"batch1_ms_median": latency["median"], "batch1_ms_p90": latency["p90"]}
            row["mask_pixels_differing"] = (masks != reference).float().mean().item()
            if path == "eager":  # a graph is captured at batch 1; compiling another costs minutes
                batched = summarize(time_forward(forward, many, 1, args.infer_iters, context))
                row |= {"batch": len(many)}
                row["batch_images_per_s"] = len(many) * 1e3 / batched["median"]
            rows.append(row)
            _print("inference", row)
        if path == "compiled":
            torch._dynamo.reset()
    return rows


def study_run(cfg: DictConfig, dm, args: argparse.Namespace) -> dict[str, int]:
    """A run of the study: its epochs and its train and val slices, the real split's with
    --data folder, else the config's fractions of the figshare set (split by patient: 2134, 468)."""
    train, val, _ = cfg.data.fractions
    sizes = {"train": round(train * FIGSHARE_SLICES), "val": round(val * FIGSHARE_SLICES)}
    sizes = dm.subset_sizes() if args.data == "folder" else sizes
    return {"train": sizes["train"], "val": sizes["val"], "epochs": cfg.trainer.max_epochs}


def projected_run_s(train: dict, infer: list[dict], precision: str, run: dict[str, int]) -> float:
    """Seconds of `run` (`study_run`) at the measured rates, as `brainseg-train` runs it by
    default: training at brainseg's rate, validation at the batch-N rate, not compiled."""
    rates = {
        (row["compiled"], row["precision"]): row["batch_images_per_s"]
        for row in infer
        if row.get("path") != "graph" and "batch_images_per_s" in row
    }
    evaluation = rates[train["compiled"], precision]
    return run["epochs"] * (run["train"] / train["brainseg_images_per_s"] + run["val"] / evaluation)


def bench_model(args: argparse.Namespace, model: str, device: torch.device) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg(args, model, Path(tmp), compiled=False)
        torch.set_float32_matmul_precision(cfg.runtime.matmul_precision)  # as brainseg.train
        torch.backends.cudnn.benchmark = cfg.trainer.benchmark  # for the bare loop too
        module, precision = build_module(cfg, load_pretrained=False), str(cfg.trainer.precision)
        print(f"== {model}: {cfg.data.image_size}², batch {cfg.data.batch_size}, {precision}")
        dm = instantiate(cfg.data, num_workers=0)
        dm.prepare_data()
        dm.setup("fit")
        stream = itertools.islice(_endless(dm.train_dataloader()), args.warmup + args.steps)
        batches = [_transfer(dm, batch, device) for batch in stream]  # in memory, on the device
        if args.compile_only:  # the compiled training step alone (compiling takes a while)
            compiled = compose_cfg(args, model, Path(tmp), compiled=True)
            return {"model": model, "train": [train_throughput(compiled, batches, args, device)]}
        if args.latency_only:
            infer = inference(cfg, module, batches, args, device)
            return {"model": model, "latency_only": True, "inference": infer}
        training = [train_throughput(cfg, batches, args, device)]
        breakdown = step_breakdown(cfg, module, batches, args, device)
        brainseg_ms = 1e3 * len(batches[0]["image"]) / training[0]["brainseg_images_per_s"]
        bare_ms = 1e3 * len(batches[0]["image"]) / training[0]["bare_images_per_s"]
        breakdown |= {"brainseg_step_ms": brainseg_ms, "bare_step_ms": bare_ms}
        # What the Trainer adds around the timed parts: its loop, logging, hooks, callbacks.
        parts = sum(v for k, v in breakdown.items() if k.endswith("_ms") and "step" not in k)
        breakdown["other_ms"] = brainseg_ms - parts
        _print("breakdown", breakdown)
        pipeline = [pipeline_throughput(cfg, args, device, on == "device") for on in args.pipeline]
        syncs = host_syncs(cfg, args, device) if device.type == "cuda" else None
        if args.compile_train:
            compiled = compose_cfg(args, model, Path(tmp), compiled=True)
            training.append(train_throughput(compiled, batches, args, device))
        loaders = []
        for augment_on in args.augment_on:
            for workers in args.workers:
                row = loader_throughput(cfg, workers, args.loader_batches, augment_on, device)
                consumption = training[0]["bare_images_per_s"]
                loaders.append({**row, "ratio_to_consumption": row["samples_per_s"] / consumption})
                _print("loader", loaders[-1])
        infer = inference(cfg, module, batches, args, device)
        run = study_run(cfg, dm, args) if args.preset == "study" else None
        run_s = projected_run_s(training[0], infer, precision, run) if run else None
        if run:
            _print("projected run", {"s": run_s, **run})
        settings = {"preset": args.preset, "image_size": cfg.data.image_size}
        settings |= {"in_channels": cfg.data.in_channels, "batch_size": cfg.data.batch_size}
        settings |= {"precision": precision, "channels_last": module.channels_last}
        settings |= {"model": OmegaConf.to_container(cfg.model, resolve=True), "data": args.data}
        settings |= {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds}
        params = sum(p.numel() for p in module.net.parameters())
        result = {"projected_run_s": run_s, "model": model, "params": params}
        result |= {"settings": {**settings, "projected_run": run}, "train": training}
        result |= {"breakdown": breakdown, "pipeline": pipeline, "host_syncs": syncs}
        return {**result, "loader": loaders, "inference": infer}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "command": "python benchmarks/throughput.py " + " ".join(argv or sys.argv[1:]),
        "machine": {**machine_info(args.device), "pytorch_lightning": pl.__version__},
        "models": [],
    }
    started = time.time()
    for model in args.models:
        results["models"].append(bench_model(args, model, device))
        results["wall_time_s"] = time.time() - started
        runs = [m.get("projected_run_s") for m in results["models"]]
        if None not in runs:  # the study's sweep: --seeds runs of each model
            results["projected_study_sweep_h"] = args.seeds * sum(runs) / 3600
        write_json(args.out, results)  # after each model: a cut-off run keeps what it measured
    if "projected_study_sweep_h" in results:
        print(f"projected sweep, {args.seeds} seeds: {results['projected_study_sweep_h']:.2f} h")
    print(f"wrote {args.out} in {results['wall_time_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
