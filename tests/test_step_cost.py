"""What a training step costs beyond the bare loop: no host syncs, the fused optimizer on CUDA."""

from __future__ import annotations

import functools
import os
import sys

import pytest
import pytorch_lightning as pl
import torch

from brainseg.module import build_module, make_optimizer
from brainseg.train import train

from .conftest import compose_config

# Reading a tensor's value on the host: on a GPU each waits for every queued kernel.
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


class CountReads(pl.Callback):
    """Counts tensor reads from the start of one training step to the start of the next."""

    def __init__(self) -> None:
        self.reads = 0
        self.per_step: list[int] = []
        self._last: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last is not None:
            self.per_step.append(self.reads - self._last)
        self._last = self.reads

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._last = None  # the epoch's end logs and validates: not a step


@pytest.fixture
def count_reads(monkeypatch):
    counter = CountReads()
    for name in READS:
        original = getattr(torch.Tensor, name)

        @functools.wraps(original)
        def counted(self, *args, _original=original, **kwargs):
            # Not the optimizer's step counters: the CPU's AdamW reads them, and they stay on
            # the host with CUDA's (fused or foreach) implementations, whose reads cost no sync.
            caller = sys._getframe(1).f_code.co_filename
            if f"torch{os.sep}optim{os.sep}" not in caller:
                counter.reads += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counter


def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, count_reads, monkeypatch):
    # The data on the device (here the CPU), no progress bar, logging every 1000 steps: every
    # read left would be a host sync per step on a GPU.
    import brainseg.train as train_module

    build = train_module.build_trainer
    monkeypatch.setattr(
        train_module,
        "build_trainer",
        lambda *args, **kwargs: _with(build(*args, **kwargs), count_reads),
    )
    train(
        compose_config(
            [
                "experiment=smoke",
                "model=unet",
                "data.augment_on=device",
                "data.on_device=true",
                "trainer.log_every_n_steps=1000",
                "trainer.max_epochs=2",
                f"paths.data_dir={tmp_path / 'data'}",
                f"paths.output_dir={tmp_path / 'run'}",
            ]
        )
    )
    assert len(count_reads.per_step) >= 4
    assert count_reads.per_step == [0] * len(count_reads.per_step)


def _with(trainer: pl.Trainer, callback: pl.Callback) -> pl.Trainer:
    trainer.callbacks.append(callback)
    return trainer


def test_the_optimizer_is_fused_on_cuda_unless_the_config_chose():
    params = [torch.nn.Parameter(torch.zeros(3))]
    cfg = compose_config(["experiment=smoke"])
    from hydra.utils import instantiate

    factory = instantiate(cfg.optimizer)
    cpu = make_optimizer(factory, params, torch.device("cpu"))
    assert not cpu.defaults.get("fused")  # the CPU keeps its numbers
    # On CUDA the factory gets fused=True; constructing needs a GPU, so read the call.
    calls = []
    make_optimizer(lambda **kw: calls.append(kw), params, torch.device("cuda"))
    assert calls == [{"params": params}], "a plain callable has no fused implementation"
    recorded = []

    class Fusable(torch.optim.AdamW):
        def __init__(self, params, lr=1e-3, fused=None, foreach=None):
            recorded.append({"fused": fused, "foreach": foreach})

    make_optimizer(functools.partial(Fusable, lr=1e-3), params, torch.device("cuda"))
    make_optimizer(functools.partial(Fusable, foreach=True), params, torch.device("cuda"))
    assert recorded == [
        {"fused": True, "foreach": None},
        {"fused": None, "foreach": True},
    ]


def test_compile_mode_reaches_torch_compile_and_a_bad_one_is_refused():
    overrides = ["experiment=smoke", "paths.output_dir=unused", "runtime.compile=true"]
    cfg = compose_config([*overrides, "runtime.compile_mode=reduce-overhead"])
    module = build_module(cfg, load_pretrained=False)
    assert module.compiled and module.compile_mode == "reduce-overhead"
    assert module._forward is not module.net  # the compiled wrapper of the same network
    with pytest.raises(ValueError, match="runtime.compile_mode='fast'"):
        build_module(compose_config([*overrides, "runtime.compile_mode=fast"]))
