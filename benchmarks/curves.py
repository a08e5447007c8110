"""The learning curves of several sweeps in one figure, one colour per model.

    python benchmarks/curves.py docs/results/converge-unet docs/results/converge-fpn \
        --out docs/figures/convergence.png

The report draws the curves of one comparison; this draws them alone, for the finished runs of
several sweep folders or their archives (benchmarks/archive_sweep.py), grouped into variants as
the report groups them (`brainseg.report.load_sweeps`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brainseg.report.collect import load_sweeps
from brainseg.report.figures import learning_curves


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sweeps", type=Path, nargs="+", help="sweep folders or their archives")
    p.add_argument("--out", type=Path, required=True, help="the figure (.png)")
    args = p.parse_args(argv)
    sweep = load_sweeps(args.sweeps, out=args.out.parent)
    if learning_curves(sweep, args.out) is None:
        raise SystemExit(
            f"no learning curve (csv/metrics.csv) in {', '.join(map(str, args.sweeps))}"
        )
    print(f"{len(sweep.ok)} runs -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
