"""Checkpoints are read without running code: a crafted .ckpt is refused by every entry point,
with the flag that would load it; brainseg's own checkpoints need nothing more."""

from __future__ import annotations

import builtins
import pickle
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from brainseg.callbacks import AtomicCheckpointIO
from brainseg.checkpoints import (
    SAFE_GLOBALS,
    TRUST_FLAG,
    UntrustedCheckpointError,
    load_checkpoint_file,
)
from brainseg.export import export
from brainseg.module import build_module, load_module
from brainseg.predict import predict
from brainseg.train import build_trainer, train

from .smoke_sweep import smoke_sweep_dir


class WritesAFile:
    """Unpickled, it calls `exec`, which writes `marker`: what a crafted checkpoint can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """(a checkpoint shaped like brainseg's with a payload in its config, the payload's file)"""
    marker = tmp_path / "code_ran.txt"
    path = tmp_path / "crafted.ckpt"
    payload = {"data": WritesAFile(marker), "model": {}, "runtime": {"compile": False}}
    torch.save(
        {"epoch": 0, "state_dict": {}, "hyper_parameters": {"config": payload}},
        path,
    )
    return path, marker


def test_the_crafted_checkpoint_runs_its_code_under_plain_pickle(crafted):
    path, marker = crafted  # the payload is live: what every test below shows is not run
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_loading_refuses_it_names_the_flag_and_runs_nothing(crafted):
    path, marker = crafted
    with pytest.raises(UntrustedCheckpointError, match=r"builtins\.exec.*trust_checkpoint=true"):
        load_checkpoint_file(path)
    with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint=true"):
        load_module(path)
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017  (trusted: the payload runs, then fails)
        load_module(path, trust=True)
    assert marker.exists()


def test_predict_and_export_refuse_it(crafted, tmp_path):
    path, marker = crafted
    (tmp_path / "in").mkdir()
    Image.new("L", (64, 64)).save(tmp_path / "in" / "slice.png")
    with pytest.raises(UntrustedCheckpointError, match=TRUST_FLAG):
        predict(path, tmp_path / "in", tmp_path / "out")
    with pytest.raises(UntrustedCheckpointError, match=TRUST_FLAG):
        export(path, "torchscript", tmp_path / "net.pt")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "net.pt").exists()


@pytest.mark.parametrize("fit", ["true", "false"])  # resuming it, or testing it
def test_training_refuses_it_before_any_work(crafted, smoke_cfg, tmp_path, fit):
    path, marker = crafted
    with pytest.raises(UntrustedCheckpointError, match=TRUST_FLAG):
        train(smoke_cfg(f"fit={fit}", f"ckpt_path={path}"))
    assert not marker.exists()
    assert not (tmp_path / "data").exists()  # nothing cached


def test_lightnings_own_load_refuses_it(crafted, smoke_cfg):
    # What Lightning loads itself (a resume, trainer.test(ckpt_path=...)) goes through the
    # trainer's checkpoint IO, whatever train() checked before.
    path, marker = crafted
    cfg = smoke_cfg()
    trainer = build_trainer(cfg, [])
    with pytest.raises(UntrustedCheckpointError, match=TRUST_FLAG):
        trainer.fit(build_module(cfg), datamodule=instantiate(cfg.data), ckpt_path=str(path))
    with pytest.raises(UntrustedCheckpointError, match=TRUST_FLAG):
        AtomicCheckpointIO().load_checkpoint(path)
    assert not marker.exists()
    AtomicCheckpointIO(trust=True).load_checkpoint(path)
    assert marker.exists()


def test_an_old_format_pickle_is_refused_naming_what_it_calls(tmp_path):
    marker = tmp_path / "code_ran.txt"
    path = tmp_path / "bare.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": WritesAFile(marker)}, protocol=4))
    with pytest.raises(UntrustedCheckpointError, match=r"builtins\.exec.*trust_checkpoint=true"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_brainsegs_own_checkpoints_need_nothing_beyond_the_allow_list(tmp_path_factory):
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        pytest.skip("torch < 2.5 cannot list a checkpoint's globals")
    sweep = smoke_sweep_dir(tmp_path_factory)
    checkpoints = sorted(sweep.glob("*/checkpoints/*.ckpt"))
    assert len(checkpoints) == 8  # unet and fpn, two seeds, best and last
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    for path in checkpoints:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        assert set(needed) <= allowed, (path, needed)
        saved = load_checkpoint_file(path)  # optimizer, scheduler, callback and loop states
        assert {"state_dict", "optimizer_states", "callbacks", "loops"} <= set(saved)
        AtomicCheckpointIO().load_checkpoint(path)
