"""Every network `model=<name>` accepts, measured at the study's and the cpu preset's sizes.

    python benchmarks/zoo.py                 # -> benchmarks/results/zoo_cpu.json
    python benchmarks/render_docs.py         # -> docs/models.md (and docs/benchmarks.md)

Per network and preset, as `brainseg-models list --preset <preset>` prints them: parameters,
FLOPs of one image at the preset's `data.image_size` (FlopCounterMode, a multiply-add counts 2)
and the CPU batch-1 latency (median ms under inference mode after warm-up). Networks are built
randomly initialised, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from brainseg.atomic import write_json
from brainseg.models import list_networks
from brainseg.models.__main__ import describe
from brainseg.timing import machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["study", "cpu"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", type=Path, default=RESULTS / "zoo_cpu.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    jobs = [(name, preset) for preset in args.presets for name in list_networks()]
    rows = [
        describe(name, preset, warmup=args.warmup, iters=args.iters)
        for name, preset in tqdm(jobs, desc="networks")
    ]
    write_json(
        args.out,
        {
            "command": " ".join(["python benchmarks/zoo.py", *sys.argv[1:]]),
            "machine": machine_info("cpu"),
            "settings": {"batch": 1, "warmup": args.warmup, "iters": args.iters},
            "zoo": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
