"""Keep a sweep's results in the repository: every job's records and the report, no checkpoints.

    python benchmarks/archive_sweep.py multirun/cpu-bf16 docs/results/cpu-bf16

Copies the sweep's multirun.yaml (which jobs it expected; without hydra.runtime, and with an
absolute sweep folder cut to its last name: both name the machine's folders), per job
metrics.json, per_image.csv, csv/metrics*.csv (the learning curve; a resumed run's earlier
epochs are in a second file) and .hydra/{config,overrides}.yaml (what ran), and the report/
folder if there is one: enough for
`brainseg-report` to rebuild the table, statistics and curves from the archive
(tests/test_results.py does), 0.3 MB of records per 6-job sweep plus the report's figures.
Checkpoints, logs and W&B files stay behind. The destination is replaced as a whole, never
left half-written.

A folder of single runs started side by side (`brainseg-train ... hydra.run.dir=<folder>/<job>`)
is archived the same way; it has no multirun.yaml.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

JOB_FILES = ("per_image.csv", ".hydra/config.yaml", ".hydra/overrides.yaml")
CURVE_FILES = "csv/metrics*.csv"
REPORT_SUFFIXES = (".md", ".csv", ".png")


def archive(sweep: Path, dest: Path) -> list[Path]:
    """Copies the sweep's records into `dest` (replacing it); returns the files written."""
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    if not jobs:
        raise SystemExit(
            f"{sweep}: no job with a metrics.json; pass the folder of a finished "
            "`brainseg-train -m ...` sweep"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the archive is for everyone
    try:
        if (sweep / "multirun.yaml").is_file():
            multirun = OmegaConf.load(sweep / "multirun.yaml")
            multirun.hydra.pop("runtime", None)
            text = OmegaConf.to_yaml(multirun)
            for absolute in {str(sweep.absolute()), str(sweep.resolve())}:
                text = text.replace(absolute, sweep.name)  # an absolute hydra.sweep.dir
            (staging / "multirun.yaml").write_text(text)
        for job in jobs:
            _copy_metrics(job, staging / job.name / "metrics.json")
            files = [job / name for name in JOB_FILES] + sorted(job.glob(CURVE_FILES))
            for path in files:
                if path.is_file():
                    _copy(path, staging / job.name / path.relative_to(job))
        for path in sorted((sweep / "report").glob("*")):
            if path.suffix in REPORT_SUFFIXES:
                _copy(path, staging / "report" / path.name)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(p for p in dest.rglob("*") if p.is_file())


def _copy_metrics(job: Path, dst: Path) -> None:
    """metrics.json names best.ckpt by its absolute path, a folder of the machine that ran;
    the archive keeps it relative to the job (the checkpoint itself is not archived)."""
    metrics = json.loads((job / "metrics.json").read_text())
    best = metrics.get("best_checkpoint")
    if best and Path(best).is_absolute():
        best_path = Path(best).resolve()
        job_path = job.resolve()
        inside = best_path.is_relative_to(job_path)
        metrics["best_checkpoint"] = str(best_path.relative_to(job_path)) if inside else None
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(metrics, indent=2) + "\n")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("sweep", type=Path, help="the sweep folder (multirun/...)")
    p.add_argument("dest", type=Path, help="where its records go (docs/results/<name>)")
    args = p.parse_args(argv)
    files = archive(args.sweep, args.dest)
    size = sum(f.stat().st_size for f in files)
    print(f"{len(files)} files, {size / 1e3:.0f} kB in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
