"""`python -m brainseg.report <sweep_dir> [<sweep_dir> ...]`: the comparison report of a sweep,
or of several sweeps from any day or machine read as one comparison."""

from __future__ import annotations

import argparse
import logging
import sys

from brainseg.report import build_report, load_sweeps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m brainseg.report",
        description="Table 1, paired statistics and figures of a sweep, into <sweep_dir>/report/; "
        "of several sweeps, into reports/<name>/. Runs are grouped by what they are: runs whose "
        "settings differ in anything but seed and fold are never averaged together.",
    )
    parser.add_argument(
        "sweep_dirs",
        nargs="+",
        metavar="sweep_dir",
        help="the folder a multirun wrote, e.g. multirun/<date>/<time>; several are compared",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="FOLDER=NAME",
        help="name the runs of one folder <model> [NAME], apart from the other folders' runs",
    )
    parser.add_argument("--name", default="", help="the comparison's name (several folders)")
    parser.add_argument(
        "--out", default=None, help="the report folder (default: <sweep>/report, reports/<name>)"
    )
    parser.add_argument(
        "--allow-mixed",
        action="store_true",
        help="report variants tested on different test sets side by side, without pairing them",
    )
    parser.add_argument(
        "--study",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="show the study's Table 1 numbers alongside (default: on)",
    )
    parser.add_argument(
        "--reference",
        default=None,
        metavar="VARIANT",
        help="compare every variant with this one (e.g. unet); default: every pair",
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
        sweep = load_sweeps(
            args.sweep_dirs,
            labels=_labels(args.label),
            include_debug=args.include_debug,
            out=args.out,
            name=args.name,
            allow_mixed=args.allow_mixed,
        )
        written = build_report(
            sweep,
            study=args.study,
            reference=args.reference,
            wandb=args.wandb,
            qualitative=args.qualitative,
            n_resamples=args.resamples,
            seed=args.seed,
        )
        if args.dashboard:
            from brainseg.tracking.dashboard import write_dashboard

            dashboard = write_dashboard(sweep, sweep.report_dir)
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


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        folder, sep, name = pair.rpartition("=")
        if not sep or not folder or not name:
            raise SystemExit(f"error: --label {pair!r}: write it as <folder>=<name>")
        labels[folder] = name
    return labels


if __name__ == "__main__":
    sys.exit(main())
