from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from .fake_sweep import make_sweep

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def test_notebook_runs_headless_on_a_sweep(tmp_path, monkeypatch):
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1, 2))
    monkeypatch.setenv("BRAINSEG_SWEEP", str(sweep))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # fmt: skip
    client.execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {})) for o in outputs)
    assert not [o for o in outputs if o.output_type == "error"]
    assert (sweep / "report" / "table.md").exists()
    assert "Dice" in text and "fpn" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # no checkpoints: no grids
    worst = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert len(worst.strip().splitlines()) == 10 + 2  # header lines + ten slices


def test_notebook_names_tumor_types_and_rebuilds_a_stale_report(tmp_path, monkeypatch):
    pytest.importorskip("ipykernel")
    import os

    from nbclient import NotebookClient

    from brainseg.report import build_report

    sweep = make_sweep(tmp_path / "sweep", seeds=(0, 1))
    build_report(sweep, wandb=False, qualitative=False)
    table = sweep / "report" / "table.md"
    table.write_text("an old report\n")
    os.utime(table, (1, 1))  # older than every job
    monkeypatch.setenv("BRAINSEG_SWEEP", str(sweep))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})  # fmt: skip
    client.execute()
    assert table.read_text() != "an old report\n"
    worst = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert "tumor type" in worst
    assert any(name in worst for name in ("meningioma", "glioma", "pituitary"))
