"""Results per stratum of the test set: per tumour type and per tumour-size tertile.

Every metric the registry can compute from per-image rows (``registry.row_metrics``) is given per
stratum, from each variant's per-image rows averaged over its runs. Size tertiles cut the test
set's tumour areas (pixels at the evaluated size, ``true_area``) at their 1/3 and 2/3 quantiles,
computed once over the slices of every variant, so that all variants share the same strata.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from brainseg.data.sources import LABEL_NAMES
from brainseg.metrics import registry

SIZE_NAMES = ("small", "medium", "large")
STRATA_COLUMNS = ["stratum", "subset", "metric", "variant", "value", "n_images"]


def size_edges(per_image: dict[str, pd.DataFrame]) -> tuple[float, float] | None:
    """The 1/3 and 2/3 quantiles of the tumour area over the test slices (each slice once, tumour
    slices only), rounded down to whole pixels (the same split of pixel counts); None without
    tumour areas."""
    frames = [f[["id", "true_area"]] for f in per_image.values() if "true_area" in f]
    if not frames:
        return None
    areas = pd.concat(frames).drop_duplicates("id")["true_area"].to_numpy(dtype=float)
    areas = areas[areas > 0]
    if areas.size == 0:
        return None
    low, high = np.floor(np.quantile(areas, [1 / 3, 2 / 3]))
    return float(low), float(high)


def row_metrics(frame: pd.DataFrame) -> list:
    """The registry's metrics computable from `frame`'s rows; the tumour-free-only ones only
    when some slice is tumour-free, as in the table."""
    tumor_free = "true_area" in frame and bool((frame["true_area"] == 0).any())
    return [s for s in registry.row_metrics() if tumor_free or not s.tumor_free_only]


def size_names(edges: tuple[float, float]) -> list[str]:
    """The tertiles' names with their area ranges, e.g. "small (≤ 152 px)"."""
    low, high = edges
    return [
        f"{SIZE_NAMES[0]} (≤ {low:g} px)",
        f"{SIZE_NAMES[1]} ({low:g}–{high:g} px)",
        f"{SIZE_NAMES[2]} (> {high:g} px)",
    ]


def subsets(
    frame: pd.DataFrame,
    edges: tuple[float, float] | None,
    label: str = "label",
    area: str = "true_area",
) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(stratum, subset, rows) of a per-image frame: all; each tumour type; each size tertile
    (tumour-free slices belong to no tertile). `label` and `area` name the frame's columns."""
    yield "all", "all", frame
    for value, group in frame.groupby(label, sort=True):
        if int(value) != 0:
            yield "tumor type", LABEL_NAMES.get(int(value), str(value)), group
    if edges is None or area not in frame:
        return
    areas = frame[area].to_numpy(dtype=float)
    low, high = edges
    masks = (areas > 0) & (areas <= low), (areas > low) & (areas <= high), areas > high
    for name, mask in zip(size_names(edges), masks, strict=True):
        if mask.any():  # tied areas can leave a tertile empty
            yield "tumor size", name, frame[mask]


def strata_table(
    per_image: dict[str, pd.DataFrame], edges: tuple[float, float] | None
) -> pd.DataFrame:
    """One row per (stratum, subset, metric, variant): the metric over the subset's slices."""
    rows = []
    for variant, frame in per_image.items():
        specs = row_metrics(frame)
        for stratum, subset, group in subsets(frame, edges):
            columns = {c: group[c].to_numpy() for c in group.columns}
            for spec in specs:
                value = registry.value_of(spec, columns)
                if np.isfinite(value):
                    rows.append([stratum, subset, spec.name, variant, value, len(group)])
    return pd.DataFrame(rows, columns=STRATA_COLUMNS)


def strata_markdown(strata: pd.DataFrame) -> str:
    """strata.md: per stratum, a table of every metric (rows) by variant (columns)."""
    lines = [
        "# Results per tumor type and tumor size",
        "",
        "Each variant's per-image results averaged over its runs, then each metric computed over "
        "the slices of the subset as over the whole test set (pooled metrics pooled within the "
        "subset). Size tertiles cut the test slices' tumor areas (pixels at the evaluated size) "
        "at their 1/3 and 2/3 quantiles. Paired differences per subset: stats.md.",
        "",
    ]
    if strata.empty:
        return "\n".join([*lines, "No per-image results.", ""])
    variants = list(dict.fromkeys(strata["variant"]))
    for (stratum, subset), block in strata.groupby(["stratum", "subset"], sort=False):
        n = block.groupby("variant")["n_images"].first()
        lines += ["## all test slices" if stratum == "all" else f"## {stratum}: {subset}", ""]
        lines += ["| metric | " + " | ".join(f"{v} (n={n.get(v, 0)})" for v in variants) + " |"]
        lines += ["|" + " --- |" * (len(variants) + 1)]
        for metric, rows in block.groupby("metric", sort=False):
            spec = registry.get(metric)
            values = rows.set_index("variant")["value"]
            cells = [spec.format(values.get(v, np.nan)) for v in variants]
            lines.append(f"| {spec.label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
