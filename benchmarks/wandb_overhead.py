"""What logging to W&B (offline) costs a training run, against the run's own CSV log.

    python benchmarks/wandb_overhead.py --root ../shared/datasets/figshare-brain-tumor-png256

Runs the same short `cpu`-preset training (real slices, U-Net, `pretrained=false`, by default
2 epochs on a quarter of the training batches) with each logger variant, alternating ABC CBA...
over `--rounds`, every run in a fresh process as `brainseg-train` runs it (Python, torch and W&B
start-up included), and writes benchmarks/results/wandb_overhead_cpu.json: each run's wall
time and the machine's load average around it; per variant the median, the ratio to `csv`,
and the seconds the W&B runs spent in W&B's own calls (start, per-step logging, media,
summary, finish: timed inside the run, so less blurred by other work on the machine than the
difference of two runs), with the media callback's seconds per logged call (`media/*_s` of
the run's summary).

Variants: `csv` (logger=csv), `wandb` (logger=wandb as shipped: brainseg's W&B settings and
media), `wandb_defaults` (logger=wandb with W&B's default settings: system-metrics sampler,
console capture, pip freeze), `wandb_no_media` (logger=wandb without the media callback).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# What brainseg.tracking.media.WandbMedia logs, as its summary names them (media/<key>_s).
MEDIA = ("val_slices", "test_media")
VARIANTS = {
    "csv": ["logger=csv"],
    "wandb": ["logger=wandb"],
    "wandb_defaults": ["logger=wandb", "~logger.wandb.settings"],
    "wandb_no_media": ["logger=wandb", "~callbacks.wandb_media"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", help="the folder data set (images/, masks/); default: the preset's")
    p.add_argument("--preset", default="cpu", help="experiment=<preset> (smoke: a dry run)")
    p.add_argument("--data-dir", type=Path, help="paths.data_dir (its cache); default: a temp dir")
    p.add_argument("--model", default="unet", help="any network model=<name> accepts")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit-train-batches", type=float, default=0.25)
    p.add_argument(
        "--variants",
        nargs="+",
        default=["csv", "wandb", "wandb_defaults"],
        choices=sorted(VARIANTS),
    )
    p.add_argument("--rounds", type=int, default=3, help="runs of each variant")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/wandb_overhead_cpu.json")
    p.add_argument("--child", help=argparse.SUPPRESS)  # a variant's output dir: run it here
    p.add_argument("overrides", nargs="*", help="more brainseg-train overrides")
    return p.parse_args(argv)


def base_overrides(args: argparse.Namespace) -> list[str]:
    """The protocol of every run: the preset, shortened, on the real slices when `--root`."""
    data = ["data=folder", f"data.root={Path(args.root).resolve()}"] if args.root else []
    return [
        f"experiment={args.preset}",
        *data,
        f"model={args.model}",
        "pretrained=false",
        f"trainer.max_epochs={args.epochs}",
        f"++trainer.limit_train_batches={args.limit_train_batches}",
        "trainer.enable_progress_bar=false",
        *args.overrides,
    ]


def overrides(args: argparse.Namespace, variant: str, output_dir: Path) -> list[str]:
    """A run's `brainseg-train` overrides."""
    paths = [f"paths.data_dir={args.data_dir}", f"paths.output_dir={output_dir}"]
    return base_overrides(args) + paths + VARIANTS[variant]


class Stopwatch:
    """Seconds spent inside some functions: wraps them, in this process only."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner: Any, name: str, label: str) -> None:
        function = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, name, timed)


def child(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One run in this process: its timings, and with W&B the seconds spent in W&B's parts of
    the run (start, per-step logging, media, summary, finish), which the load of the machine
    blurs less than the difference of two runs."""
    from pytorch_lightning.loggers import WandbLogger

    import brainseg.train
    from brainseg.config import compose
    from brainseg.tracking import media as wandb_media
    from brainseg.tracking import run as tracking

    watch = Stopwatch()
    watch.wrap(tracking, "wandb_logger", "start")  # import wandb, init (the logger's _target_)
    watch.wrap(WandbLogger, "log_hyperparams", "start")  # the run's configuration, once
    watch.wrap(WandbLogger, "log_metrics", "log_metrics")  # every logged step and epoch
    watch.wrap(brainseg.train, "log_run_summary", "summary")  # FLOPs included
    media = wandb_media.WandbMedia
    watch.wrap(media, "on_validation_epoch_end", "media_val_slices")
    watch.wrap(media, "on_test_end", "media_test")
    cfg = compose(overrides(args, variant, Path(args.child)))
    started = time.perf_counter()
    record = brainseg.train.train(cfg)
    trained = time.perf_counter()
    wandb = sys.modules.get("wandb")
    run = wandb.run if wandb is not None else None
    # The callback's own seconds per logged panel / test table (it skips the epochs not due).
    media = {key: run.summary.get(f"media/{key}_s") for key in MEDIA} if run else {}
    tracking.finish_wandb()
    watch.seconds["finish"] = time.perf_counter() - trained
    return {
        "train_s": trained - started,
        "status": record["status"],
        "test_dice": record["test"].get("dice"),
        "wandb_s": watch.seconds if run else {},
        "wandb_calls": watch.calls if run else {},
        "media_s_per_call": media,
    }


def run_once(args: argparse.Namespace, variant: str, workdir: Path, n: int) -> dict[str, Any]:
    output_dir = workdir / f"{n:02d}-{variant}"
    command = [sys.executable, __file__, "--data-dir", str(args.data_dir)]
    command += ["--root", args.root] if args.root else []
    command += ["--preset", args.preset, "--model", args.model, "--epochs", str(args.epochs)]
    command += ["--limit-train-batches", str(args.limit_train_batches)]
    command += ["--variants", variant, "--child", str(output_dir), *args.overrides]
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONWARNINGS": "ignore",
    }
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    row = {"variant": variant, "wall_s": wall, **result}
    row["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(f"{variant:<15} {wall:7.1f} s  (train {result['train_s']:.1f} s)", flush=True)
    return row


def order(variants: list[str], rounds: int) -> list[str]:
    """ABBA...: each variant as often first as last, so a drift in load hits all alike."""
    sequence = []
    for r in range(rounds):
        sequence += variants if r % 2 == 0 else variants[::-1]
    return sequence


def summarize(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    summary = {}
    for variant in variants:
        walls = [run["wall_s"] for run in runs if run["variant"] == variant]
        trains = [run["train_s"] for run in runs if run["variant"] == variant]
        summary[variant] = {"median_wall_s": statistics.median(walls), "wall_s": walls}
        summary[variant]["median_train_s"] = statistics.median(trains)
    base = summary[variants[0]]
    for variant in variants[1:]:
        row = summary[variant]
        row["ratio_to_" + variants[0]] = row["median_wall_s"] / base["median_wall_s"]
        row["overhead_s"] = row["median_wall_s"] - base["median_wall_s"]
        own = [run for run in runs if run["variant"] == variant and run["wandb_s"]]
        if not own:
            continue
        # W&B's own seconds in the run, and the run as it would be without them.
        spent = [sum(run["wandb_s"].values()) for run in own]
        row["median_wandb_s"] = statistics.median(spent)
        row["wandb_share_of_run"] = statistics.median(
            sum(run["wandb_s"].values()) / run["wall_s"] for run in own
        )
        row["median_wandb_s_by_part"] = {
            part: statistics.median(run["wandb_s"].get(part, 0.0) for run in own)
            for part in own[0]["wandb_s"]
        }
        for key in MEDIA:
            per_call = [run["media_s_per_call"].get(key) for run in own]
            if per_call and None not in per_call:
                row[f"media_{key}_s_per_call"] = statistics.median(per_call)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args, args.variants[0])))
        return {}
    from brainseg.atomic import write_json
    from brainseg.config import compose
    from brainseg.timing import machine_info

    machine = machine_info("cpu")  # its load average: before the first run
    with tempfile.TemporaryDirectory(prefix="wandb_overhead_") as tmp:
        workdir = Path(tmp)
        args.data_dir = args.data_dir or workdir / "data"
        # The slices' cache once, before any timed run.
        from hydra.utils import instantiate

        instantiate(compose(overrides(args, "csv", workdir / "prepare")).data).prepare_data()
        started = time.time()
        sequence = order(args.variants, args.rounds)
        runs = [run_once(args, variant, workdir, n) for n, variant in enumerate(sequence)]
    results = {
        "command": "python benchmarks/wandb_overhead.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine,
        # The data root as given (children get it resolved): no machine's paths in the results.
        "settings": [
            f"data.root={args.root}" if o.startswith("data.root=") else o
            for o in base_overrides(args)
        ],
        "summary": summarize(runs, args.variants),
        "runs": runs,
        "wall_time_s": time.time() - started,
    }
    results["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, results)
    print(json.dumps(results["summary"], indent=2))
    return results


if __name__ == "__main__":
    main()
