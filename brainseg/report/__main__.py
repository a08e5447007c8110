"""`python -m brainseg.report <sweep_dir>`: the comparison report of a sweep."""

from __future__ import annotations

import argparse
import logging
import sys

from brainseg.report import build_report, load_sweep


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m brainseg.report",
        description="Table 1, paired statistics and figures of a sweep, into <sweep_dir>/report/.",
    )
    parser.add_argument(
        "sweep_dir", help="the folder a multirun wrote, e.g. multirun/<date>/<time>"
    )
    parser.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show the study's Table 1 numbers alongside (default: on)",
    )
    parser.add_argument(
        "--wandb",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log to the sweep's W&B group (default: when its jobs used W&B)",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="also build the sweep's W&B dashboard: saved online, else its definition is written "
        "to report/wandb_dashboard.json with the command that publishes it",
    )
    parser.add_argument(
        "--qualitative",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="predict the best/median/worst slices with the checkpoints",
    )
    parser.add_argument(
        "--include-debug",
        action="store_true",
        help="average debug runs (no full training) too; they are listed in the header either way",
    )
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sweep = load_sweep(args.sweep_dir, include_debug=args.include_debug)
        written = build_report(
            sweep,
            reference=args.reference,
            wandb=args.wandb,
            qualitative=args.qualitative,
            n_resamples=args.resamples,
            seed=args.seed,
        )
        if args.dashboard:
            from brainseg.tracking.dashboard import write_dashboard

            dashboard = write_dashboard(sweep, sweep.root / "report")
            written.update({p.name: p for p in (dashboard["definition"], dashboard["layout"])})
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((written["table.md"]).read_text())
    print("Report written:")
    for name, path in written.items():
        print(f"  {name:<24} {path}")
    if args.dashboard and "url" in dashboard:
        print(f"W&B dashboard: {dashboard['url']}")
    elif args.dashboard:
        print(f"W&B dashboard written offline; publish it with:\n  {dashboard['publish']}")
    if sweep.problems:
        print(
            f"warning: {len(sweep.problems)} job(s) missing, failed or incomplete, left out and "
            "listed in table.md",
            file=sys.stderr,
        )
    if sweep.debug:
        done = "included" if sweep.include_debug else "left out (--include-debug includes them)"
        print(f"warning: {len(sweep.debug)} debug run(s) {done}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
