"""data.on_device: the subsets on the model's device (here the CPU, which runs the same code)
give the very batches, runs and resumes of the loader path with augment_on=device."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from brainseg.data import BrainTumorDataModule
from brainseg.data.device import DeviceTrainBatches
from brainseg.data.synthetic import SyntheticSource
from brainseg.train import train

from .conftest import compose_config

SMOKE_TEST_KEYS = ("dice", "dice_pooled", "precision", "recall", "lesion_recall", "loss")


def datamodule(tmp_path, on_device: bool, *overrides: str):
    cfg = compose_config(
        [
            "experiment=smoke",
            f"paths.data_dir={tmp_path / 'data'}",
            "data.augment_on=device",
            f"data.on_device={str(on_device).lower()}",
            "data.batch_size=5",  # 48 slices: a last, incomplete validation batch
            *overrides,
        ]
    )
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def prepared(dm, batch: dict) -> dict:
    """A batch as the training step gets it (the hooks Lightning calls around the transfer)."""
    return dm.on_after_batch_transfer(dm.on_before_batch_transfer(batch, 0), 0)


def assert_same_batches(loader, on_device, dm_loader, dm_device) -> None:
    expected = [prepared(dm_loader, batch) for batch in loader]
    got = [prepared(dm_device, batch) for batch in on_device]
    assert len(got) == len(expected) == len(loader) == len(on_device) > 1
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, torch.Tensor):
                assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
            else:
                assert ours[key] == value, key


def test_on_device_batches_equal_the_loader_batches_in_every_subset_and_epoch(tmp_path):
    dm_loader = datamodule(tmp_path, on_device=False)
    dm_device = datamodule(tmp_path, on_device=True)
    assert not dm_loader.data_on_device() and dm_device.data_on_device()
    train_loader, train_device = dm_loader.train_dataloader(), dm_device.train_dataloader()
    assert isinstance(train_loader, torch.utils.data.DataLoader)
    assert not isinstance(train_device, torch.utils.data.DataLoader)
    for epoch in (0, 1, 2):  # Lightning sets each epoch on the sampler of either
        train_loader.sampler.set_epoch(epoch)
        train_device.sampler.set_epoch(epoch)
        assert_same_batches(train_loader, train_device, dm_loader, dm_device)
    first = [b["id"] for b in train_device]
    train_device.sampler.set_epoch(3)
    assert [b["id"] for b in train_device] != first, "a new epoch, a new order"
    for name in ("val_dataloader", "test_dataloader"):
        loader, on_device = getattr(dm_loader, name)(), getattr(dm_device, name)()
        assert_same_batches(loader, on_device, dm_loader, dm_device)


def test_on_device_true_with_the_augmentation_in_the_loader_is_refused():
    source = SyntheticSource(num_slices=4, num_patients=2, size=32)
    with pytest.raises(ValueError, match="set data.augment_on=device"):
        BrainTumorDataModule(source, augment_on="loader", on_device=True)
    with pytest.raises(ValueError, match="data.on_device='sometimes'"):
        BrainTumorDataModule(source, augment_on="device", on_device="sometimes")


def test_auto_keeps_the_data_on_the_host_without_a_cuda_trainer(tmp_path):
    dm = datamodule(tmp_path, on_device="auto")  # no trainer: not on CUDA
    assert not dm.data_on_device()
    assert isinstance(dm.train_dataloader(), torch.utils.data.DataLoader)


def smoke_run(tmp_path, run: str, on_device: bool, *overrides: str) -> dict:
    return train(
        compose_config(
            [
                "experiment=smoke",
                "model=unet",
                "data.augment_on=device",
                f"data.on_device={str(on_device).lower()}",
                f"paths.data_dir={tmp_path / 'data'}",
                f"paths.output_dir={tmp_path / run}",
                "scheduler.T_max=2",
                *overrides,
            ]
        )
    )


def weights(tmp_path, run: str) -> dict[str, torch.Tensor]:
    path = tmp_path / run / "checkpoints" / "last.ckpt"
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_weights(tmp_path, run: str, reference: str) -> None:
    ours, theirs = weights(tmp_path, run), weights(tmp_path, reference)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_a_fit_on_device_equals_the_loader_fit_and_resumes_exactly(tmp_path, monkeypatch):
    drawn = []
    draw = DeviceTrainBatches.__iter__

    def counted(self):
        for batch in draw(self):
            drawn.append(batch["id"])
            yield batch

    monkeypatch.setattr(DeviceTrainBatches, "__iter__", counted)
    loader = smoke_run(tmp_path, "loader", False)
    assert not drawn
    on_device = smoke_run(tmp_path, "device", True)
    assert len(drawn) == 2 * (48 * 7 // 10 // 8), "the device run drew its batches on the device"
    assert on_device["status"] == loader["status"] == "ok"
    for key in SMOKE_TEST_KEYS:
        assert on_device["test"][key] == loader["test"][key], key
    assert on_device["best_val_dice"] == loader["best_val_dice"]
    assert_same_weights(tmp_path, "device", "loader")
    # Cut after the first epoch and resumed, on the device: the straight run, bit for bit.
    smoke_run(tmp_path, "cut", True, "trainer.max_epochs=1")
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = smoke_run(tmp_path, "cut", True, f"ckpt_path={last}")
    for key in SMOKE_TEST_KEYS:
        assert resumed["test"][key] == loader["test"][key], key
    assert_same_weights(tmp_path, "cut", "loader")
