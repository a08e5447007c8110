"""What a W&B user sees, read back from the offline run files that real smoke runs write:
names, tags, one run id across a resume, the summary, the media, one report run per sweep and
the dashboard definition. Nothing of W&B is mocked."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from hydra.errors import InstantiationException

from brainseg.identity import variant_key
from brainseg.report import build_report
from brainseg.report.__main__ import main as report_main
from brainseg.report.collect import load_sweep
from brainseg.tracking.dashboard import DASHBOARD_FILE, load_dashboard, report_run_id
from brainseg.tracking.dashboard import main as dashboard_main
from brainseg.tracking.run import RUN_ID_FILE, finish_wandb, run_id, run_tags
from brainseg.train import train

from .conftest import REPO_ROOT, load_benchmark
from .fake_sweep import make_sweep

wandb_pb2 = pytest.importorskip("wandb.proto.wandb_internal_pb2")

# What the training runs' summaries must hold, besides the test metrics.
SUMMARY_KEYS = ("best/val_dice", "best/epoch", "params", "flops", "wall_time_s", "git_commit")
SUMMARY_KEYS += ("device", "split", "trainer_precision", "media/val_slices_s")


def read_records(path: Path) -> list:
    """The records of a `.wandb` file, decoded with wandb's own protobuf `Record`.

    The file is a LevelDB-style log (wandb's `datastore` format): a 7-byte header, then 32 KiB
    blocks of chunks, each `<crc32, length, type>` + data, where type 1 is a whole record and
    2, 3, 4 its first, middle and last pieces. wandb >= 0.2x reads it in wandb-core (Go) and
    no longer ships the Python reader, `wandb.sdk.internal.datastore`.
    """
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


class OfflineRun:
    """One offline run directory (`offline-run-<time>-<id>`) as W&B would upload it."""

    def __init__(self, path: Path):
        (self.file,) = path.glob("*.wandb")
        self.records = read_records(self.file)
        (run,) = [r.run for r in self.records if r.WhichOneof("record_type") == "run"]
        self.id, self.name, self.group = run.run_id, run.display_name, run.run_group
        self.job_type, self.tags = run.job_type, list(run.tags)

    def of_type(self, kind: str) -> list:
        return [getattr(r, kind) for r in self.records if r.WhichOneof("record_type") == kind]

    @property
    def summary(self) -> dict:
        """The last value of every summary key."""
        values = {}
        for summary in self.of_type("summary"):
            for item in summary.update:
                key = item.key or "/".join(item.nested_key)
                values[key] = json.loads(item.value_json)
        return values

    def history(self, key: str) -> list[dict]:
        """Every value logged under `key`, in order; media as W&B's description of them
        (`_type`, `filenames`, ...), which the history holds field by field."""
        values = []
        for history in self.of_type("history"):
            fields = {
                item.nested_key[1]: json.loads(item.value_json)
                for item in history.item
                if list(item.nested_key[:1]) == [key] and len(item.nested_key) == 2
            }
            if fields:
                values.append(fields)
        return values

    def scalars(self, key: str) -> list[float]:
        """Every plain value logged under `key`, in order."""
        return [
            json.loads(item.value_json)
            for history in self.of_type("history")
            for item in history.item
            if (item.key or "/".join(item.nested_key)) == key
        ]

    def history_types(self, key: str) -> list[str]:
        return [value.get("_type") for value in self.history(key)]

    def media_files(self, key: str) -> list[Path]:
        """The files of the media logged under `key`, in the run's `files/` directory."""
        files = self.file.parent / "files"
        return [files / name for value in self.history(key) for name in value.get("filenames", [])]

    @property
    def config_keys(self) -> set[str]:
        return {item.key for c in self.of_type("config") for item in c.update}


def offline_runs(root: Path, pattern: str = "**/wandb/offline-run-*") -> list[OfflineRun]:
    """The offline runs under `root`, once W&B has written each whole: `wandb.finish()` returns
    before wandb-core has flushed a run's last records, which end with its exit record."""
    deadline = time.monotonic() + 60
    while True:
        runs = [OfflineRun(p) for p in sorted(root.glob(pattern))]
        if all(run.of_type("exit") for run in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def record_rows(cfg) -> list[str]:
    return (Path(cfg.paths.output_dir) / "per_image.csv").read_text().splitlines()[1:]


def wandb_smoke(smoke_cfg, *overrides: str, run: str = "run"):
    return smoke_cfg("logger=wandb", *overrides, run=run)


def test_a_run_is_named_tagged_summarised_and_shows_its_slices(smoke_cfg):
    cfg = wandb_smoke(smoke_cfg, "model=unet", "seed=3", "data.fold=2")
    record = train(cfg)
    finish_wandb()

    (run,) = offline_runs(Path(cfg.paths.output_dir))
    assert run.name == "unet-seed3-fold2" and run.job_type == "train"
    assert (Path(cfg.paths.output_dir) / RUN_ID_FILE).read_text().strip() == run.id
    for tag in ("model:unet", "seed:3", "fold:2", "precision:32-true", "device:cpu", "scratch"):
        assert tag in run.tags
    summary = run.summary
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["best/val_dice"] == pytest.approx(record["best_val_dice"])
    # Epochs count from 1 in W&B, as in the report's figures; Lightning's CSV log from 0.
    log = pd.read_csv(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")
    best = int(log.loc[log["val/dice"].idxmax(), "epoch"])
    assert summary["best/epoch"] == best + 1
    assert sorted(set(run.scalars("epoch"))) == [1, 2]
    assert summary["params"] == record["params"] and summary["flops"] > 0
    assert summary["split"] == record["split"] and summary["git_commit"] == record["git_commit"]
    for key, value in record["test"].items():
        assert summary[f"test/{key}"] == pytest.approx(value)
    # Two epochs: slices after the first and the last, then the test table and worst slices.
    assert run.history_types("val/slices") == ["images/separated"] * 2
    assert run.history_types("test/per_image") == ["table-file"]
    assert run.history_types("test/worst_slices") == ["images/separated"]
    panels = run.history("val/slices")
    assert [value["count"] for value in panels] == [4, 4]
    assert all("Dice" in caption for caption in panels[0]["captions"])
    assert {"truth", "prediction"} <= set(panels[0]["all_masks"][0])
    assert all(path.is_file() for path in run.media_files("val/slices"))
    assert run.history("test/per_image")[0]["nrows"] == len(record_rows(cfg))
    # The configuration is logged once, at the top level: not again as the module's hparams.
    assert {"model", "data", "trainer", "seed", "variant"} <= run.config_keys
    assert record["variant"].startswith("unet-")  # what the dashboard groups the seeds by
    assert "config" not in run.config_keys


def test_only_a_network_with_a_backbone_is_tagged_pretrained(smoke_cfg):
    def tags(*overrides: str) -> list[str]:
        return run_tags(wandb_smoke(smoke_cfg, *overrides).logger.wandb.identity)

    assert "pretrained" in tags("model=fpn", "pretrained=true")
    assert "scratch" in tags("model=fpn", "pretrained=false")
    assert "scratch" in tags("model=unet", "pretrained=true")  # nothing to load


def test_a_resumed_run_continues_its_wandb_run(smoke_cfg):
    first = wandb_smoke(smoke_cfg, "trainer.max_epochs=1", "scheduler.T_max=2")
    train(first)
    finish_wandb()
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    train(wandb_smoke(smoke_cfg, f"ckpt_path={last}", "scheduler.T_max=2"))
    finish_wandb()

    runs = offline_runs(Path(first.paths.output_dir))
    assert len(runs) == 2  # one offline directory per process; W&B syncs them into one run
    assert runs[0].id == runs[1].id and runs[0].name == runs[1].name
    assert runs[1].summary["epochs"] == 2


def test_a_run_id_is_reused_only_when_resuming(tmp_path):
    first = run_id(tmp_path, resume=True)  # nothing to resume yet: a new id, kept
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == first
    assert run_id(tmp_path, resume=True) == first
    fresh = run_id(tmp_path, resume=False)  # a new run in the same directory
    assert fresh != first and run_id(tmp_path, resume=True) == fresh


def test_media_callback_does_nothing_without_a_wandb_logger(smoke_cfg):
    cfg = smoke_cfg("logger=csv", "callbacks.wandb_media.every_n_epochs=1")
    assert cfg.callbacks.wandb_media._target_ == "brainseg.tracking.media.WandbMedia"
    record = train(cfg)
    assert record["status"] == "ok"
    assert not (Path(cfg.paths.output_dir) / "wandb").exists()


def test_reports_update_one_report_run_and_write_the_dashboard(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep", wandb=True)
    group = load_sweep(sweep).group
    build_report(sweep, qualitative=False, n_resamples=50)
    args = [str(sweep), "--dashboard", "--no-qualitative", "--resamples", "50"]
    assert report_main(args) == 0

    runs = offline_runs(sweep / "report")
    assert len(runs) == 2
    assert {run.id for run in runs} == {report_run_id("brainseg-test", group)}
    assert {(run.name, run.job_type, run.group) for run in runs} == {("report", "report", group)}
    assert runs[1].history_types("report/table") == ["table-file"]

    printed = capsys.readouterr().out
    definition = sweep / "report" / DASHBOARD_FILE
    assert f"python -m brainseg.tracking.dashboard {definition} --entity" in printed
    assert (sweep / "report" / "wandb_dashboard.png").stat().st_size > 0
    workspace = load_dashboard(definition, entity="someone")
    assert workspace.entity == "someone" and workspace.project == "brainseg-test"
    assert str(workspace.runset_settings.filters) == f"Metric(\"Group\") == '{group}'"
    panels = {type(p).__name__: p for s in workspace.sections for p in s.panels}
    assert set(panels) >= {"LinePlot", "BarPlot", "ScatterPlot", "MediaBrowser"}
    assert set(panels) >= {"WeavePanelSummaryTable"}
    keys = json.dumps(json.loads(definition.read_text())["view"])
    for key in ("val/dice", "test/dice", "test/inference_ms", "test/per_image", "val/slices"):
        assert key in keys, key
    with pytest.raises(ValueError, match="--entity"):
        load_dashboard(definition)
    # Grouped by variant: each W&B group is one of the report's variants.
    assert [g.name for g in workspace.runset_settings.groupby] == ["variant"]
    variants = json.loads(definition.read_text())["brainseg"]["variants"]
    assert sorted(variants.values()) == ["fpn", "unet"] and len(set(variants)) == 2


def test_a_comparison_dashboard_shows_exactly_the_compared_runs_by_id(tmp_path, caplog):
    from brainseg.report import load_sweeps
    from brainseg.tracking.dashboard import write_dashboard

    folders = [make_sweep(tmp_path / name, wandb=True) for name in ("a", "b")]
    ids = []
    for folder, label in zip(folders, "ab", strict=True):
        for i, job in enumerate(sorted(d for d in folder.iterdir() if d.is_dir())):
            (job / "wandb_id.txt").write_text(f"{label}{i}run\n")
            ids.append(f"{label}{i}run")
    sweep = load_sweeps(folders, labels={str(f): f.name for f in folders}, out=tmp_path / "cmp")
    written = write_dashboard(sweep, sweep.report_dir, publish=False)
    filters = str(load_dashboard(written["definition"], entity="e").runset_settings.filters)
    assert all(f"'{run_id}'" in filters for run_id in ids) and "Group" not in filters
    # The two folders' runs differ only by label: one W&B group, as the definition says.
    variants = json.loads(written["definition"].read_text())["brainseg"]["variants"]
    assert variants[variant_key({"model.name": "unet"})] == "unet [a] + unet [b]"
    assert "the W&B dashboard pools unet [a] and unet [b]" in caplog.text


def test_dashboard_needs_a_sweep_that_used_wandb(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep", wandb=False)
    assert report_main([str(sweep), "--dashboard", "--no-qualitative", "--resamples", "20"]) == 2
    assert "logger=wandb" in capsys.readouterr().err


@pytest.mark.slow
def test_fold_sweep_gives_distinct_runs_and_one_report_run(tmp_path):
    """The issue's done-when, through the command lines: `-m model=unet,fpn data.fold=1,2`."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "brainseg.train", "-m", "experiment=smoke", "logger=wandb"]
    command += ["model=unet,fpn", "data.fold=1,2", f"hydra.sweep.dir={sweep}"]
    command += [f"paths.data_dir={tmp_path / 'data'}"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = [sys.executable, "-m", "brainseg.report", str(sweep), "--no-qualitative"]
    for extra in ([], ["--dashboard"]):
        done = subprocess.run(
            [*report, "--resamples", "50", *extra],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    runs = offline_runs(sweep, "*-seed*/wandb/offline-run-*")  # the jobs, not report/
    names = sorted(run.name for run in runs)
    assert names == ["fpn-seed0-fold1", "fpn-seed0-fold2", "unet-seed0-fold1", "unet-seed0-fold2"]
    assert len({run.id for run in runs}) == 4 and len({run.group for run in runs}) == 1
    for run in runs:
        model = run.name.split("-")[0]
        assert f"model:{model}" in run.tags and "preset:smoke" in run.tags
        assert run.summary["best/val_dice"] is not None and run.summary["best/epoch"] in (1, 2)
        assert run.history_types("val/slices") == ["images/separated"] * 2
    reports = offline_runs(sweep / "report")
    assert len(reports) == 2 and len({run.id for run in reports}) == 1
    assert reports[0].group == runs[0].group
    assert (sweep / "report" / DASHBOARD_FILE).is_file()


@pytest.mark.slow
def test_overhead_benchmark_times_both_loggers_and_attributes_wandb_seconds(tmp_path):
    bench = load_benchmark("wandb_overhead")
    out = tmp_path / "overhead.json"
    args = ["--preset", "smoke", "--rounds", "1", "--variants", "csv", "wandb"]
    results = bench.main([*args, "--data-dir", str(tmp_path / "data"), "--out", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert [run["variant"] for run in results["runs"]] == ["csv", "wandb"]
    assert results["runs"][0]["wandb_s"] == {}  # nothing of W&B in a csv run
    wandb_row = results["summary"]["wandb"]
    assert wandb_row["ratio_to_csv"] == pytest.approx(
        wandb_row["median_wall_s"] / results["summary"]["csv"]["median_wall_s"]
    )
    parts = wandb_row["median_wandb_s_by_part"]
    assert {"start", "log_metrics", "media_val_slices", "media_test", "summary"} <= set(parts)
    assert 0 < wandb_row["wandb_share_of_run"] < 1
    assert wandb_row["media_val_slices_s_per_call"] > 0
    assert wandb_row["media_test_media_s_per_call"] > 0


@pytest.fixture
def online(monkeypatch, tmp_path):
    """W&B online with a key, talking to `url` on this machine only: never W&B's servers."""

    import wandb

    def to(url: str) -> None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", url)
        monkeypatch.setenv("WANDB_INIT_TIMEOUT", "20")
        wandb.teardown()  # wandb keeps the settings of its first run in this process (offline)

    yield to
    finish_wandb()
    wandb.teardown()  # the next test's runs start from the environment restored


@pytest.fixture
def refusing_server():
    """A local HTTP server that answers 401 (an invalid API key) to every request."""
    import http.server
    import threading

    class Refuse(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"errors": [{"message": "user is not logged in"}]}')

        do_GET = do_POST = _answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free once closed: nothing listens there


# The logger's error, as Hydra's instantiate passes it on (its message kept).
WANDB_FAILURE = (RuntimeError, InstantiationException)


def start_logger(smoke_cfg):
    from hydra.utils import instantiate

    return instantiate(wandb_smoke(smoke_cfg, "trainer.max_epochs=1").logger.wandb)


def test_no_network_fails_at_once_and_says_what_to_do(smoke_cfg, online):
    online(f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    with pytest.raises(WANDB_FAILURE, match=r"cannot be reached") as failure:
        start_logger(smoke_cfg)
    assert "WANDB_MODE=offline" in str(failure.value) and "logger=csv" in str(failure.value)
    assert time.monotonic() - started < 30  # not wandb's own ~100 s of retries


def test_an_invalid_key_is_named_with_the_fix(smoke_cfg, online, refusing_server):
    online(refusing_server)
    with pytest.raises(WANDB_FAILURE, match=r"W&B refused the API key") as failure:
        start_logger(smoke_cfg)
    assert "wandb login --relogin" in str(failure.value)
    assert "WANDB_MODE=offline" in str(failure.value)


def test_publishing_a_dashboard_without_a_key_says_so_without_a_traceback(
    tmp_path, monkeypatch, capsys
):
    sweep = make_sweep(tmp_path / "sweep", wandb=True)
    assert report_main([str(sweep), "--dashboard", "--no-qualitative", "--resamples", "20"]) == 0
    capsys.readouterr()
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    definition = sweep / "report" / DASHBOARD_FILE
    assert dashboard_main([str(definition), "--entity", "someone"]) == 2
    err = capsys.readouterr().err
    assert "no W&B API key" in err and "wandb login" in err and "Traceback" not in err
    # With a key but no network: the cause, not wandb's traceback.
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    assert dashboard_main([str(definition), "--entity", "someone"]) == 1
    assert "cannot be reached" in capsys.readouterr().err
