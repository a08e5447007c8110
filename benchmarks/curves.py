"""The learning curves of several sweeps in one figure, one colour per model.

    python benchmarks/curves.py docs/results/converge-unet docs/results/converge-fpn \
        --out docs/figures/convergence.png

The report draws the curves of one sweep; this puts the finished runs of several side by side
(sweep folders or their archives, benchmarks/archive_sweep.py), with the report's own figure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainseg.report.collect import Sweep, load_sweep
from brainseg.report.figures import learning_curves


def merged(sweeps: list[Path], root: Path) -> Sweep:
    """The finished runs of `sweeps` as one sweep at `root`."""
    return Sweep(
        root=root, runs=[run for sweep in sweeps for run in load_sweep(sweep).ok], multirun={}
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sweeps", type=Path, nargs="+", help="sweep folders or their archives")
    p.add_argument("--out", type=Path, required=True, help="the figure (.png)")
    args = p.parse_args(argv)
    sweep = merged(args.sweeps, args.out.parent)
    if learning_curves(sweep, args.out) is None:
        raise SystemExit(
            f"no learning curve (csv/metrics.csv) in {', '.join(map(str, args.sweeps))}"
        )
    print(f"{len(sweep.runs)} runs -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
