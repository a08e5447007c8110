"""The summary that benchmarks/gpu_check.sh prints last, from the files a phase wrote.

python benchmarks/gpu_summary.py speed OUT
python benchmarks/gpu_summary.py study OUT RUNS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def speed(out: Path) -> list[str]:
    """Per network: rates and ratio, the step's breakdown, whole steps by data path, syncs."""
    lines = []
    latency = []
    for model in ("unet", "fpn"):
        result = _read(out / f"throughput_{model}.json")
        if not result or not result.get("models"):
            lines.append(f"{model}: not measured (see speed.log)")
            continue
        measured = result["models"][0]
        train = measured["train"][0]
        lines.append(
            f"{model}: bare {train['bare_images_per_s']:.0f} img/s, brainseg "
            f"{train['brainseg_images_per_s']:.0f} img/s, ratio {train['ratio']:.3f}"
        )
        breakdown = measured.get("breakdown") or {}
        lines.append("  ms/step: " + ", ".join(f"{k[:-3]} {_fmt(v)}" for k, v in breakdown.items()))
        for row in measured.get("pipeline") or []:
            where = "on the device" if row["on_device"] else f"loader, {row['workers']} workers"
            lines.append(f"  whole steps, data {where}: {row['images_per_s']:.0f} img/s")
        syncs = measured.get("host_syncs")
        if syncs:
            lines.append(f"  host syncs per step: {syncs['syncs_per_step']:.2f} {syncs['first']}")
        if measured.get("projected_run_s"):
            lines.append(f"  projected 80-epoch run: {measured['projected_run_s']:.0f} s")
        latency += [(model, row) for row in measured.get("inference") or []]
    compiled = _read(out / "compiled_train.json") or {"models": []}
    for measured in compiled["models"]:
        train = (measured.get("train") or [{}])[0]
        if "ratio" in train:
            bare, ours = train["bare_images_per_s"], train["brainseg_images_per_s"]
            lines.append(
                f"{measured['model']} compiled (reduce-overhead): bare {bare:.0f} img/s, "
                f"brainseg {ours:.0f} img/s, ratio {train['ratio']:.3f}"
            )
    chosen = _read(out / "latency_paths.json") or {"models": []}
    for measured in chosen["models"]:
        lines.append(
            f"{measured['model']}: the test stage times {measured.get('path')} "
            f"({_fmt(measured.get('inference_ms'))} ms; "
            f"eager {_fmt(measured.get('inference_ms_eager'))} ms)"
            + "".join(
                f"; {p['name']} {p['ms']:.3f} ms, masks differ {p['mismatch']:.1e}"
                for p in measured.get("paths") or []
            )
            + (f" ERROR {measured['error']}" if "error" in measured else "")
        )
    lines.append("batch-1 latency (ms, median) | path | precision | mask pixels differing")
    for model, row in latency:
        if "error" in row:
            lines.append(f"  {model} {row['path']} {row['precision']}: {row['error'][:120]}")
            continue
        lines.append(
            f"  {model} | {row['path']} | {row['precision']} | {row['batch1_ms_median']:.3f} | "
            f"{row['mask_pixels_differing']:.2e}"
        )
    return lines


def study(out: Path, runs: Path) -> list[str]:
    """Per network: status, epochs, wall time and test metrics of the run; GPU use."""
    lines = []
    for model in ("unet", "fpn"):
        record = _read(runs / model / "metrics.json")
        if not record:
            lines.append(f"{model}: no metrics.json (see train_tail.log in the tar)")
            continue
        test = record.get("test", {})
        keys = ("dice", "precision", "recall", "lesion_recall", "inference_ms", "inference_path")
        keys += ("inference_ms_eager",)
        lines.append(
            f"{model}: {record['status']} ({record.get('debug') or 'full run'}), "
            f"{record['epochs']} epochs, {record['wall_time_s']:.0f} s, best val dice "
            f"{_fmt(record.get('best_val_dice'))}; test "
            + ", ".join(f"{k} {_fmt(test.get(k))}" for k in keys)
        )
    use = out / "gpu_use.txt"
    if use.is_file():
        rows = [line.split() for line in use.read_text().splitlines() if line[:1] != "#"]
        sm = [int(row[1]) for row in rows if len(row) > 1 and row[1].isdigit()]
        if sm:
            lines.append(f"GPU use (dmon sm %): mean {sum(sm) / len(sm):.0f}, min {min(sm)}")
    return lines


def main(argv: list[str]) -> int:
    phase, out = argv[0], Path(argv[1])
    lines = speed(out) if phase == "speed" else study(out, Path(argv[2]))
    print("\n".join(["== summary", *lines]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
