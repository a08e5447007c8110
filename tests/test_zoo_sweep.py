"""One smoke sweep over every network brainseg ships, plus two added the documented ways (a
config file alone, and a Python file with its config, both outside brainseg), then the report
over all of them: nothing else is edited to add a network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from torchvision.models._api import WeightsEnum

from brainseg.models import list_networks, smp_models
from brainseg.module import load_module
from brainseg.report import build_report

from .smoke_sweep import run_sweep

# A family brainseg wraps already: one config file.
LINKNET_YAML = """\
_target_: brainseg.models.smp_models.SmpNetwork
name: my_linknet
arch: Linknet
encoder: ${oc.select:networks.my_linknet.encoder,resnet18}
in_channels: ${data.in_channels}
pretrained: ${pretrained}
weights_path: null
"""
# New code: one Python file and one config file.
TINY_PY = """\
import torch
from torch import nn

from brainseg.models import SegmentationNetwork


class TinyNet(SegmentationNetwork):
    def __init__(self, in_channels: int = 3, width: int = 4) -> None:
        super().__init__(in_channels, multiple=2)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
"""
TINY_YAML = """\
_target_: my_networks.TinyNet
name: my_tiny
in_channels: ${data.in_channels}
width: ${oc.select:networks.my_tiny.width,4}
"""
ADDED = ["my_linknet", "my_tiny"]
# Every shipped network but the study's FPN, which the session's smoke sweep trains already.
SWEPT = [name for name in list_networks() if name != "fpn"] + ADDED


@pytest.fixture(scope="module")
def zoo_sweep(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("zoo")
    conf, code, sweep = base / "conf", base / "code", base / "sweep"
    (conf / "model").mkdir(parents=True)
    code.mkdir()
    (conf / "model" / "my_linknet.yaml").write_text(LINKNET_YAML)
    (conf / "model" / "my_tiny.yaml").write_text(TINY_YAML)
    (code / "my_networks.py").write_text(TINY_PY)
    pythonpath = os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))
    run_sweep(
        "experiment=smoke",
        f"model={','.join(SWEPT)}",
        "seed=0",
        f"hydra.searchpath=[file://{conf}]",
        f"hydra.sweep.dir={sweep}",
        f"paths.data_dir={base / 'data'}",
        cwd=base,
        # No library may reach the internet while building a network with pretrained=false.
        env={"PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    return sweep


def test_one_sweep_trains_every_network_and_records_its_cost(zoo_sweep):
    records = {}
    for path in zoo_sweep.glob("*/metrics.json"):
        record = json.loads(path.read_text())
        records[record["model"]] = record
    assert sorted(records) == sorted(SWEPT)
    for name, record in records.items():
        assert record["status"] == "ok", name
        assert record["epochs"] == 2 and record["image_size"] == 64, name
        assert record["params"] > 0 and record["flops"] > 0 and record["wall_time_s"] > 0, name
        assert record["test"]["inference_ms"] > 0 and 0 <= record["test"]["dice"] <= 1, name
    # The sizes are the smoke preset's, and an unsized network runs at its config's defaults.
    assert records["my_tiny"]["params"] == 3 * 9 * 4 + 4 + 4 + 1
    assert records["my_tiny"]["flops"] == 2 * (3 * 9 * 4 * 32 * 32 + 4 * 64 * 64)
    assert records["unet"]["params"] < records["smp_unet"]["params"]


def test_the_report_compares_every_network_of_the_sweep(zoo_sweep):
    out = build_report(zoo_sweep, wandb=False, qualitative=False, n_resamples=100)
    header = (zoo_sweep / "report" / "table.md").read_text()
    for name in SWEPT:
        assert f"| {name} (n=1)" in header, name
    assert len(pd.read_csv(out["table.csv"])) > 0


def test_every_checkpoint_rebuilds_its_network_offline(zoo_sweep, monkeypatch):
    # The added network's code is importable where it is rebuilt, as where it trained.
    monkeypatch.syspath_prepend(str(zoo_sweep.parent / "code"))
    fetched = []
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda *a, **k: fetched.append(a))
    monkeypatch.setattr(smp_models, "hf_hub_download", lambda *a, **k: fetched.append(a))
    for checkpoint in sorted(zoo_sweep.glob("*/checkpoints/best.ckpt")):
        module = load_module(checkpoint)
        assert module.net(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64), checkpoint
    assert fetched == []
