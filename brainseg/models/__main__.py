"""Every network `model=<name>` accepts, with its cost: `brainseg-models list`.

For each `conf/model/*.yaml`, at a preset's size (`--preset`, its `data.image_size` and
`networks` entry): parameters, FLOPs of one forward pass of one image (FlopCounterMode; a
multiply-add counts as 2, so GFLOPs = 2 x GMACs) and the CPU batch-1 latency (median ms under
inference mode after warm-up, at this process's torch threads). Networks are built randomly
initialised: nothing is downloaded, and sizes do not depend on the weights.

    brainseg-models list                       # the study preset: 256x256
    brainseg-models list --preset cpu --json zoo.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from brainseg.atomic import write_json
from brainseg.models.base import count_flops
from brainseg.models.registry import PRESETS, build_network, list_networks, network_config
from brainseg.timing import summarize, time_forward


def describe(
    name: str,
    preset: str = "study",
    latency: bool = True,
    warmup: int = 3,
    iters: int = 10,
    config_dirs: list[Path] | None = None,
) -> dict[str, Any]:
    """Network `name` at preset `preset`: its class, size, cost and published weights."""
    model, size = network_config(name, preset, config_dirs=config_dirs or [])
    net = build_network(model, load_pretrained=False).eval()
    row = {
        "name": name,
        "class": type(net).__name__,
        "preset": preset,
        "image_size": size,
        "params": sum(p.numel() for p in net.parameters()),
        "flops": count_flops(net, size),
        "multiple": net.multiple,
        "pretrained_weights": net.pretrained_weights,
        "cpu_ms": None,
    }
    if latency:
        x = torch.randn(1, net.in_channels, size, size)
        row["cpu_ms"] = summarize(time_forward(net, x, warmup=warmup, iters=iters))["median"]
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned text, one network a line."""
    lines = [f"{'name':<22} {'class':<24} {'params (M)':>10} {'GFLOPs':>8} {'CPU ms':>8}  weights"]
    for r in rows:
        ms = "-" if r["cpu_ms"] is None else f"{r['cpu_ms']:.1f}"
        lines.append(
            f"{r['name']:<22} {r['class']:<24} {r['params'] / 1e6:>10.2f} "
            f"{r['flops'] / 1e9:>8.2f} {ms:>8}  {r['pretrained_weights'] or '-'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """`brainseg-models list`: prints one line per network; returns the rows."""
    parser = argparse.ArgumentParser(prog="brainseg-models", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every network with params, FLOPs and latency")
    listing.add_argument("names", nargs="*", help="these networks only (default: all)")
    listing.add_argument("--preset", default="study", choices=PRESETS, help="sizes and image size")
    listing.add_argument("--no-latency", action="store_true", help="skip the timing (faster)")
    listing.add_argument("--iters", type=int, default=10, help="timed forward passes")
    listing.add_argument("--json", type=Path, help="also write the rows to this file")
    args = parser.parse_args(argv)
    names = args.names or list_networks()
    unknown = sorted(set(names) - set(list_networks()))
    if unknown:
        parser.error(f"unknown networks {unknown}; choose from {list_networks()}")
    rows = [describe(name, args.preset, not args.no_latency, iters=args.iters) for name in names]
    size = rows[0]["image_size"] if rows else "?"
    print(f"preset {args.preset}: {size}x{size}, batch 1, {torch.get_num_threads()} CPU threads")
    print(format_table(rows))
    print("GFLOPs: one image, a multiply-add counts as 2; CPU ms: median batch-1 forward")
    if args.json:
        write_json(args.json, rows)
    return rows


def cli() -> None:
    """The console script: `main` without its return value (which would be the exit code)."""
    main()


if __name__ == "__main__":
    cli()
