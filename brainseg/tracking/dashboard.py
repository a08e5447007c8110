"""The sweep in W&B: the report run in the sweep's group, and the comparison dashboard (a saved
W&B workspace over the group's runs, built with `wandb-workspaces`).

python -m brainseg.tracking.dashboard <sweep>/report/wandb_dashboard.json --entity <entity>
publishes a dashboard definition that an offline report wrote.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainseg.atomic import write_json
from brainseg.metrics import registry
from brainseg.tracking.run import (
    RUN_ID_FILE,
    check_reachable,
    wandb_failure,
    wandb_has_credentials,
)

if TYPE_CHECKING:  # the report reads sweeps; W&B only takes what it found
    import pandas as pd

    from brainseg.report.collect import Sweep

log = logging.getLogger(__name__)

DASHBOARD_FILE = "wandb_dashboard.json"
# The report run's tables (log_report), shown in the dashboard.
REPORT_TABLES = ("report/table", "report/stats", "report/strata")


def test_metric_panels() -> dict[str, list[str]]:
    """The test metrics the runs log (brainseg.metrics.registry), one bar chart per unit (a
    chart's metrics share an axis): {title: ["test/<name>", ...]}, Dice apart."""
    panels: dict[str, list[str]] = {}
    for spec in registry.quality_metrics():
        if "test" not in spec.stages or spec.name == "dice":
            continue
        title = f"test metrics ({spec.unit})" if spec.unit else "test metrics"
        panels.setdefault(title, []).append(f"test/{spec.name}")
    return panels


def log_report(
    sweep: Sweep,
    table: pd.DataFrame,
    stats: pd.DataFrame,
    figures: list[Path],
    out_dir: Path,
    strata: pd.DataFrame | None = None,
) -> str | None:
    """One W&B run (job_type "report") in the sweep's group holding the table, the statistics,
    the results per tumor type and size (`strata`) and the figures. Its id derives from the group
    (`report_run_id`): running the report again updates the same run. Offline, under
    `out_dir/wandb`, when no credentials are found.

    Returns:
        The run's directory, or None when the sweep did not use W&B.
    """
    logger_cfg = sweep.wandb_config
    if logger_cfg is None:
        return None
    import wandb

    project = _plain(logger_cfg.get("project")) or "brainseg"
    offline = _offline(logger_cfg)
    run = wandb.init(
        project=project,
        entity=_plain(logger_cfg.get("entity")),
        group=sweep.group,
        job_type="report",
        name="report",
        id=report_run_id(project, sweep.group),
        resume="allow",
        tags=["report"],
        dir=str(out_dir),
        mode="offline" if offline else "online",
        reinit="create_new",
        settings={"console": "off", "x_disable_stats": True, "x_save_requirements": False},
    )
    try:
        run.log(
            {
                "report/table": wandb.Table(dataframe=table.reset_index()),
                "report/stats": wandb.Table(dataframe=stats) if len(stats) else None,
                "report/strata": (
                    wandb.Table(dataframe=strata) if strata is not None and len(strata) else None
                ),
                **{f"report/{p.stem}": wandb.Image(str(p)) for p in figures},
            }
        )
        run_dir = run.dir
    finally:
        run.finish()
    if offline:
        log.warning("W&B: logged offline; upload with `wandb sync %s`", Path(run_dir).parent)
    return run_dir


def report_run_id(project: str, group: str) -> str:
    """A W&B run id that only the project and the sweep's group determine."""
    return "report-" + hashlib.sha256(f"{project}/{group}".encode()).hexdigest()[:16]


def build_dashboard(sweep: Sweep, entity: str | None = None) -> Any:
    """The sweep's comparison as a `wandb_workspaces` Workspace over the compared runs, grouped
    by variant (`group_key`): validation Dice over epochs (mean ± std over seeds or folds) with
    the validation slices, test metrics by variant, Dice against inference time, the per-image
    table with the worst slices, and the report run's table and statistics."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    logger_cfg = _wandb_config(sweep)
    key = group_key(sweep)
    spread = {"groupby": wr.Config(key), "groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}

    def section(name: str, panels: list[Any], columns: int = 3) -> Any:
        layout = ws.SectionLayoutSettings(columns=columns, rows=2)
        return ws.Section(name=name, panels=panels, is_open=True, layout_settings=layout)

    sections = [
        section(
            "Validation by variant (mean ± std over seeds or folds)",
            [
                wr.LinePlot(title="val Dice", x="epoch", y=["val/dice"], **spread),
                wr.LinePlot(title="loss", x="epoch", y=["train/loss_epoch", "val/loss"], **spread),
                wr.MediaBrowser(
                    title="validation slices by step",
                    media_keys=["val/slices"],
                    gallery_axis="step",
                ),
            ],
        ),
        section(
            "Test by variant",
            [
                wr.BarPlot(title="test Dice", metrics=["test/dice"], **spread),
                *(
                    wr.BarPlot(title=title, metrics=keys, **spread)
                    for title, keys in test_metric_panels().items()
                ),
                wr.BarPlot(title="best val Dice", metrics=["best/val_dice"], **spread),
            ],
        ),
        section(
            "Accuracy and speed",
            [
                wr.ScatterPlot(
                    title="test Dice vs inference ms (batch 1)",
                    x=wr.SummaryMetric("test/inference_ms"),
                    y=wr.SummaryMetric("test/dice"),
                ),
                wr.BarPlot(title="inference ms", metrics=["test/inference_ms"], **spread),
            ],
            columns=2,
        ),
        section(
            "Per image",
            [
                wr.WeavePanelSummaryTable(table_name="test/per_image"),
                wr.MediaBrowser(title="worst test slices", media_keys=["test/worst_slices"]),
            ],
            columns=2,
        ),
        section(
            "Report",
            [
                *(wr.WeavePanelSummaryTable(table_name=name) for name in REPORT_TABLES),
                wr.MediaBrowser(
                    title="report figures",
                    media_keys=[
                        "report/learning_curves",
                        "report/dice_vs_ms",
                        "report/reliability",
                    ],
                ),
            ],
        ),
    ]
    return ws.Workspace(
        entity=entity or _plain(logger_cfg.get("entity")) or "",
        project=_plain(logger_cfg.get("project")) or "brainseg",
        name=f"brainseg {sweep.group}"[:100],
        sections=sections,
        runset_settings=ws.RunsetSettings(
            filters=runset_filter(sweep),
            groupby=[ws.Config(key)],
            pinned_columns=[
                f"config:{key}",
                "summary:best/val_dice",
                "summary:test/dice",
                "summary:test/inference_ms",
                "config:seed",
            ],
        ),
        settings=ws.WorkspaceSettings(x_axis="epoch", max_runs=100),
    )


def group_key(sweep: Sweep) -> str:
    """The W&B config key the dashboard groups runs by: `variant` (`brainseg.identity.
    variant_key`, which a run logs with its configuration and records in `metrics.json`), so
    that the seeds of one variant pool and nothing else does; `model.name` for runs recorded
    before `variant` was."""
    return "variant" if any(run.metrics.get("variant") for run in sweep.used) else "model.name"


def variant_keys(sweep: Sweep) -> dict[str, str]:
    """{W&B variant key: the report's variant}, for reading the dashboard's groups. Variants
    that the report keeps apart only by their folders' labels or data share a key: W&B pools
    them, and the warning says so."""
    keys: dict[str, set[str]] = {}
    for run in sweep.used:
        if run.metrics.get("variant"):
            keys.setdefault(run.metrics["variant"], set()).add(run.variant)
    for key, variants in keys.items():
        if len(variants) > 1:
            log.warning(
                "the W&B dashboard pools %s: same settings (%s), told apart only by folder "
                "label or data; compare them in the report's table",
                " and ".join(sorted(variants)),
                key,
            )
    return {key: " + ".join(sorted(variants)) for key, variants in keys.items()}


def compared_run_ids(sweep: Sweep) -> list[str]:
    """The W&B run ids of the runs the report compares (each run folder's `wandb_id.txt`)."""
    ids = []
    for run in sweep.used:
        path = run.job_dir / RUN_ID_FILE if run.job_dir else None
        if path is not None and path.is_file():
            ids.append(path.read_text().strip())
    return ids


def runset_filter(sweep: Sweep):
    """The dashboard's runs: exactly those the report compared, by W&B run id, whatever sweep,
    day or machine they come from; the sweep's group for runs that recorded no id."""
    import wandb_workspaces.workspaces as ws

    ids = compared_run_ids(sweep)
    if ids:
        return ws.And(ws.Metric("ID").isin(ids))
    return ws.And(ws.Metric("Group") == sweep.group)


def write_dashboard(sweep: Sweep, out_dir: Path, publish: bool | None = None) -> dict[str, Any]:
    """Writes the dashboard's definition (`wandb_dashboard.json`: the W&B view as the API takes
    it) and its layout (`wandb_dashboard.png`) under `out_dir`; saves it to W&B when online.

    Args:
        publish: save it to W&B; None = when the sweep's W&B settings and credentials allow.

    Returns:
        {"definition": path, "layout": path, and "url" once saved or "publish" (the command that
        saves it) otherwise}.
    """
    logger_cfg = _wandb_config(sweep)
    publish = not _offline(logger_cfg) if publish is None else publish
    workspace = build_dashboard(sweep)
    definition = {
        "brainseg": {
            "sweep": str(sweep.root),
            "group": sweep.group,
            "runs": f"the compared runs, grouped by {group_key(sweep)} (config)",
            "variants": variant_keys(sweep),
        },
        # wandb-workspaces has no public (de)serialiser: its View model is what the API stores.
        "view": workspace._to_model().model_dump(by_alias=True, exclude_none=True, mode="json"),
    }
    path = write_json(out_dir / DASHBOARD_FILE, definition)
    written: dict[str, Any] = {
        "definition": path,
        "layout": render_dashboard(definition, out_dir / "wandb_dashboard.png"),
    }
    if publish:
        written["url"] = publish_dashboard(path)
    else:
        written["publish"] = publish_command(sweep, path)
    return written


def publish_command(sweep: Sweep, definition: Path) -> str:
    """What uploads the offline runs and then saves the dashboard over them."""
    return (
        f"wandb sync {sweep.root}/*/wandb/offline-run-* {sweep.root}/report/wandb/offline-run-* "
        f"&& python -m brainseg.tracking.dashboard {definition} --entity <entity>"
    )


def load_dashboard(path: Path, entity: str | None = None) -> Any:
    """The Workspace of a definition that `write_dashboard` wrote, for `entity` if given."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.workspaces import internal

    view = internal.View.model_validate(json.loads(Path(path).read_text())["view"])
    if entity:
        view.entity = entity
    if not view.entity:
        raise ValueError(
            f"{path} names no W&B entity (the sweep's logger.wandb.entity was null): pass "
            "--entity <your user or team>"
        )
    return ws.Workspace._from_model(view)


def publish_dashboard(path: Path, entity: str | None = None) -> str:
    """Saves the dashboard of `path` as a new view of its project; returns its URL."""
    if not entity and not json.loads(Path(path).read_text())["view"].get("entity"):
        import wandb

        entity = wandb.Api().default_entity
    workspace = load_dashboard(path, entity).save()
    return workspace.url


def render_dashboard(definition: dict[str, Any], path: Path) -> Path:
    """A picture of the dashboard's layout, from its definition: each section's panels in the
    section's columns, in order, with their kind, grouping, title and keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = definition["view"]["spec"]["section"]["panelBankConfig"]["sections"]
    columns_of = [s["flowConfig"]["columnsPerPage"] for s in sections]
    n_rows = [max(1, -(-len(s["panels"]) // c)) for s, c in zip(sections, columns_of, strict=True)]
    height = 0.8 + sum(0.5 + 1.6 * n for n in n_rows)
    fig, ax = plt.subplots(figsize=(11, height))
    ax.set_xlim(0, 3)
    ax.set_ylim(height, 0)
    ax.axis("off")
    group = definition["brainseg"]["group"]
    ax.text(0, 0.3, f"W&B dashboard of the sweep group {group}", fontsize=12, weight="bold")
    ax.text(0, 0.55, definition["brainseg"].get("runs", ""), fontsize=9, color="#5a6375")
    y = 0.7
    for section, columns, rows in zip(sections, columns_of, n_rows, strict=True):
        ax.text(0, y + 0.3, section["name"], fontsize=11, weight="bold", color="#333333")
        y += 0.45
        width = 3 / columns
        for i, panel in enumerate(section["panels"]):
            x0, y0 = (i % columns) * width, y + (i // columns) * 1.6
            box = plt.Rectangle(
                (x0 + 0.03, y0 + 0.05), width - 0.06, 1.45, fc="#f4f6fb", ec="#8a94a6"
            )
            ax.add_patch(box)
            kind, grouping, title, keys = _panel_text(panel)
            ax.text(x0 + 0.08, y0 + 0.3, kind, fontsize=8, color="#5a6375")
            ax.text(x0 + 0.08, y0 + 0.5, grouping, fontsize=8, color="#5a6375")
            ax.text(x0 + 0.08, y0 + 0.85, title, fontsize=10, weight="bold")
            wrapped = textwrap.fill(keys, width=int(44 * width))
            ax.text(
                x0 + 0.08,
                y0 + 1.05,
                wrapped,
                fontsize=8,
                family="monospace",
                color="#1f4e99",
                va="top",
            )
        y += 1.6 * rows + 0.05
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _panel_text(panel: dict[str, Any]) -> tuple[str, str, str, str]:
    """(kind, grouping, title, keys) of a panel of the definition."""
    config = panel.get("config", {})
    grouping = ""
    if config.get("groupBy"):
        grouping = f"grouped by {config['groupBy'].replace('.value', '')}"
        if config.get("groupArea"):
            grouping += f": {config.get('groupAgg', 'mean')} ± {config['groupArea']}"
    keys = ", ".join(config.get("metrics") or config.get("mediaKeys") or [])
    if config.get("metrics") and config.get("xAxis"):
        keys += f" vs {config['xAxis']}"
    elif config.get("yAxis") and config.get("xAxis"):
        keys = f"{config['yAxis']} vs {config['xAxis']}"
    if panel.get("viewType") == "Weave":
        keys = _weave_key(panel)
        return "Weave table", grouping, "table", keys
    return panel.get("viewType", "panel"), grouping, config.get("chartTitle") or keys, keys


def _weave_key(panel: dict[str, Any]) -> str:
    # A summary table panel is a Weave expression runs.summary["<key>"]; find the key in it.
    text = json.dumps(panel)
    for key in ("test/per_image", *REPORT_TABLES):
        if f'"{key}"' in text:
            return f'summary["{key}"]'
    return "summary table"


def _wandb_config(sweep: Sweep) -> dict[str, Any]:
    logger_cfg = sweep.wandb_config
    if logger_cfg is None:
        raise ValueError(
            f"the jobs of {sweep.root} did not log to W&B (logger.wandb is not in their "
            ".hydra/config.yaml): a dashboard needs runs; train with logger=wandb"
        )
    return logger_cfg


def _offline(logger_cfg: dict[str, Any]) -> bool:
    return (
        os.environ.get("WANDB_MODE") == "offline"
        or bool(logger_cfg.get("offline"))
        or not wandb_has_credentials()
    )


def _plain(value: Any) -> Any:
    # Unresolved interpolations (e.g. ${oc.env:...}) cannot be resolved outside the job.
    return None if isinstance(value, str) and "${" in value else value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m brainseg.tracking.dashboard",
        description="Save a dashboard definition (report/wandb_dashboard.json) to W&B.",
    )
    parser.add_argument("definition", type=Path, help=f"the {DASHBOARD_FILE} a report wrote")
    parser.add_argument("--entity", help="W&B user or team (default: the definition's, or yours)")
    args = parser.parse_args(argv)
    if not args.definition.is_file():
        print(
            f"error: {args.definition} does not exist: give the {DASHBOARD_FILE} that "
            "`brainseg-report <sweep> --dashboard` wrote",
            file=sys.stderr,
        )
        return 2
    if not wandb_has_credentials():
        print(
            "error: no W&B API key found: run `wandb login` (or set WANDB_API_KEY), then "
            "run this command again",
            file=sys.stderr,
        )
        return 2
    try:
        check_reachable()
        url = publish_dashboard(args.definition, args.entity)
    except ValueError as error:  # the definition names no entity
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # from check_reachable, already worded
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # wandb's and its HTTP client's errors
        print(f"error: {wandb_failure(error)}", file=sys.stderr)
        return 1
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
