"""Logs the report into the sweep's W&B group, next to its training runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from brainseg.report.collect import Sweep

log = logging.getLogger(__name__)


def log_report(
    sweep: Sweep, table: pd.DataFrame, stats: pd.DataFrame, figures: list[Path], out_dir: Path
) -> str | None:
    """One W&B run (job_type "report") in the sweep's group holding the table, the statistics
    and the figures. Offline, under `out_dir/wandb`, when no credentials are found.

    Returns:
        The run's directory, or None when the sweep did not use W&B.
    """
    logger_cfg = sweep.wandb_config
    if logger_cfg is None:
        return None
    import wandb

    from brainseg.train import wandb_has_credentials

    offline = (
        os.environ.get("WANDB_MODE") == "offline"
        or bool(logger_cfg.get("offline"))
        or not wandb_has_credentials()
    )
    run = wandb.init(
        project=_plain(logger_cfg.get("project")) or "brainseg",
        entity=_plain(logger_cfg.get("entity")),
        group=sweep.group,
        job_type="report",
        name="report",
        dir=str(out_dir),
        mode="offline" if offline else "online",
        reinit="create_new",
    )
    try:
        run.log(
            {
                "report/table": wandb.Table(dataframe=table.reset_index()),
                "report/stats": wandb.Table(dataframe=stats) if len(stats) else None,
                **{f"report/{p.stem}": wandb.Image(str(p)) for p in figures},
            }
        )
        run_dir = run.dir
    finally:
        run.finish()
    if offline:
        log.warning("W&B: logged offline; upload with `wandb sync %s`", Path(run_dir).parent)
    return run_dir


def _plain(value: Any) -> Any:
    # Unresolved interpolations (e.g. ${oc.env:...}) cannot be resolved outside the job.
    return None if isinstance(value, str) and "${" in value else value
