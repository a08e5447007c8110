"""Speed of brainseg's networks next to segmentation_models_pytorch, in one run.

For each model and input size: training throughput (forward + backward + AdamW step on random
data, images/s) and batch-1 inference latency (median ms under torch.inference_mode, after
warm-up). Our SemanticFPN is compared with smp.FPN(decoder_merge_policy="cat") on the same
ResNet; smp has no plain U-Net (its Unet uses a ResNet encoder), so UNet rows have no ratio.

    python benchmarks/models.py                       # CPU -> benchmarks/results/models_cpu.json
    python benchmarks/models.py --device cuda --bf16 --channels-last --steps 20 --iters 100
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torchvision
from torch import nn
from tqdm import tqdm

from brainseg.atomic import write_json
from brainseg.models import SemanticFPN, UNet
from brainseg.timing import machine_info

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (constructor, smp counterpart or None)
MODELS: dict[str, tuple[Callable[[], nn.Module], str | None]] = {
    "unet_w16": (lambda: UNet(base_width=16), None),
    "unet_w32": (lambda: UNet(base_width=32), None),
    "unet_w64": (lambda: UNet(base_width=64), None),
    # Each of ours right before its smp counterpart, so both see the same machine load.
    "fpn_resnet18": (lambda: SemanticFPN("resnet18", pretrained=False), "smp_fpn_resnet18"),
    "smp_fpn_resnet18": (lambda: smp_fpn("resnet18"), None),
    "fpn_resnet50": (lambda: SemanticFPN("resnet50", pretrained=False), "smp_fpn_resnet50"),
    "smp_fpn_resnet50": (lambda: smp_fpn("resnet50"), None),
}
# Batch sizes on CPU: 16 at 128² and 4 at 256² (as in the reference baselines), smaller for
# the width-64 U-Net, which runs at ~0.3 images/s at 256² on 2 cores.
CPU_BATCH = {128: 16, 256: 4}
CPU_BATCH_UNET64 = {128: 4, 256: 2}


def smp_fpn(encoder: str) -> nn.Module:
    return smp.FPN(
        encoder_name=encoder, encoder_weights=None, decoder_merge_policy="cat", classes=1
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(run: dict, args: argparse.Namespace) -> tuple[Callable[[], None], Callable[[], None]]:
    """The model of ``run`` as two closures: one training step, one batch-1 inference."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MODELS[run["model"]][0]().to(device)
    run["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    size, batch = run["size"], run["batch"]
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    x1 = x[:1].clone()
    y = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def train_step() -> None:
        model.train()
        with autocast():
            loss = nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            model(x1)

    return train_step, infer


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns: list[Callable[[], None]], warmup: int, n: int, device) -> list[float]:
    """Median seconds of each function, calling them in turn so all see the same machine load."""
    times: list[list[float]] = [[] for _ in fns]
    for i in range(warmup + n):
        for fn, t in zip(fns, times, strict=True):
            elapsed = timed(fn, device)
            if i >= warmup:
                t.append(elapsed)
    return [statistics.median(t) for t in times]


def plan(args: argparse.Namespace) -> list[list[dict]]:
    """Groups of runs measured together: each of ours with its smp counterpart, others alone.

    The width-64 U-Net gets fewer iterations on CPU, where it runs at ~0.3 images/s at 256².
    """
    groups = []
    for size in args.sizes:
        names = list(args.models)
        while names:
            name = names.pop(0)
            group = [name]
            partner = MODELS[name][1]
            if partner in names:
                names.remove(partner)
                group.append(partner)
            heavy = name == "unet_w64" and args.device == "cpu"
            batch = args.batch or (CPU_BATCH_UNET64 if heavy else CPU_BATCH).get(size, 4)
            settings = {
                "size": size,
                "batch": batch,
                "steps": min(args.steps, 2) if heavy else args.steps,
                "warmup_steps": 1 if heavy else args.warmup,
                "iters": min(args.iters, 5) if heavy else args.iters,
                "warmup_iters": 2 if heavy else args.warmup,
            }
            groups.append([{"model": n, **settings} for n in group])
    return groups


def measure(group: list[dict], args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    closures = [prepare(run, args) for run in group]
    s = group[0]
    infer_s = interleaved([c[1] for c in closures], s["warmup_iters"], s["iters"], device)
    step_s = interleaved([c[0] for c in closures], s["warmup_steps"], s["steps"], device)
    for run, inf, step in zip(group, infer_s, step_s, strict=True):
        run["load_avg_1min"] = round(os.getloadavg()[0], 2)
        run["train_images_per_s"] = round(run["batch"] / step, 3)
        run["inference_ms"] = round(inf * 1e3, 2)
    return group


def add_ratios(rows: list[dict]) -> None:
    """ours / smp for each FPN row: > 1 means ours trains faster, or takes longer to infer."""
    by_key = {(r["model"], r["size"]): r for r in rows}
    for r in rows:
        ref = by_key.get((MODELS[r["model"]][1], r["size"]))
        if ref is not None:
            r["vs"] = ref["model"]
            r["train_ratio_ours_smp"] = round(
                r["train_images_per_s"] / ref["train_images_per_s"], 3
            )
            r["inference_ratio_ours_smp"] = round(r["inference_ms"] / ref["inference_ms"], 3)


def machine(args: argparse.Namespace) -> dict:
    return {
        **machine_info(args.device),
        "torchvision": torchvision.__version__,
        "segmentation_models_pytorch": smp.__version__,
        "device": args.device,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | input | batch | params (M) | train images/s | batch-1 inference ms "
        "| train ratio ours/smp | inference ratio ours/smp |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        ratios = [str(r.get(k, "")) for k in ("train_ratio_ours_smp", "inference_ratio_ours_smp")]
        lines.append(
            f"| {r['model']} | {r['size']}² | {r['batch']} | {r['params_m']} | "
            f"{r['train_images_per_s']:.2f} | {r['inference_ms']:.1f} | "
            + " | ".join(ratios)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=None, help="override the batch size")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--iters", type=int, default=10, help="timed batch-1 inferences")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps/inferences first")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True

    rows = [row for group in tqdm(plan(args), desc="benchmark") for row in measure(group, args)]
    add_ratios(rows)
    result = {
        "command": " ".join(["python benchmarks/models.py", *sys.argv[1:]]),
        "machine": machine(args),
        "settings": {
            "bf16": args.bf16,
            "channels_last": args.channels_last,
            "optimizer": "AdamW lr 1e-4, BCE-with-logits loss, random data, 3 input channels",
            "train": "images/s = batch / median step time after warm-up",
            "pairs": "each of ours and its smp counterpart run in the same loop, alternating "
            "iterations, so the ratio holds even when other processes load the machine",
            "inference": "batch 1, torch.inference_mode, median ms after warm-up",
            "note": "on CPU unet_w64 runs 1 warm-up + at most 2 timed training steps and 5 "
            "timed inferences (it is slow there), so its numbers are rougher",
        },
        "results": rows,
    }
    out = write_json(args.out or RESULTS / f"models_{args.device}.json", result)
    print(markdown(rows))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
