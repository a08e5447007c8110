"""The one line a run or a sweep ends with: where it landed, its headline numbers, what next.

Light on purpose (json and Hydra only): the sweep's line is printed by a Hydra callback in the
launching process, after the last job.
"""

from __future__ import annotations

import json
import shlex
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def run_line(record: dict[str, Any], run_dir: str | Path) -> str:
    """`run <dir>: <model> seed <s>, test Dice 0.7412, status ok · next: brainseg-report <dir>`."""
    dice = (record.get("test") or {}).get("dice")
    numbers = f"test Dice {dice:.4f}" if dice is not None else "not tested"
    status = record.get("status", "?")
    if record.get("debug"):
        status += f" ({record['debug']})"
    quoted = shlex.quote(str(run_dir))
    return (
        f"run {run_dir}: {record.get('model')} seed {record.get('seed')}, {numbers}, "
        f"status {status} · next: brainseg-report {quoted}"
    )


def sweep_line(sweep_dir: str | Path) -> str:
    """`sweep <dir>: 4 jobs, 4 ok; test Dice unet 0.7412 (n=2), fpn 0.7011 (n=2) · next: ...`:
    each model's mean test Dice over the sweep's finished (`ok`) jobs."""
    sweep_dir = Path(sweep_dir)
    records = []
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # the report names unreadable jobs; this line only counts
    jobs = sum(1 for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir())
    ok = [r for r in records if r.get("status") == "ok"]
    by_model: dict[str, list[float]] = {}
    for record in ok:
        dice = (record.get("test") or {}).get("dice")
        if dice is not None:
            by_model.setdefault(str(record.get("model")), []).append(float(dice))
    means = ", ".join(
        f"{model} {statistics.fmean(values):.4f} (n={len(values)})"
        for model, values in by_model.items()
    )
    numbers = f"test Dice {means}" if means else "no finished non-debug job"
    debug = sum(1 for r in records if r.get("status") == "debug")
    counted = f"{jobs} jobs, {len(ok)} ok" + (f", {debug} debug" if debug else "")
    quoted = shlex.quote(str(sweep_dir))
    return f"sweep {sweep_dir}: {counted}; {numbers} · next: brainseg-report {quoted}"


class SweepSummary(Callback):
    """Prints `sweep_line` when a multirun ends (hydra/default.yaml: hydra.callbacks)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print(sweep_line(sweep_dir.resolve()), flush=True)
