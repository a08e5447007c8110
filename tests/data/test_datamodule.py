import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from brainseg.config import compose
from brainseg.data import BrainTumorDataModule
from brainseg.data.synthetic import SyntheticSource

AUGMENT = {"hflip": 0.5, "affine": {"p": 1.0, "rotate": 15, "scale": 0.1, "shift": 0.05}}


def datamodule(tmp_path, **kwargs) -> BrainTumorDataModule:
    settings = dict(
        image_size=32, cache_dir=tmp_path / "cache", batch_size=4, num_workers=0, augment=AUGMENT
    )
    settings.update(kwargs)
    return BrainTumorDataModule(
        SyntheticSource(num_slices=40, num_patients=10, size=48), **settings
    )


def test_batches_have_the_agreed_keys_shapes_and_dtypes(tmp_path):
    dm = datamodule(tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "mask", "id", "pid", "label", "seed"}
    assert batch["seed"].dtype == torch.int64 and len(set(batch["seed"].tolist())) == 4
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, 32, 32) and batch["mask"].dtype == torch.float32
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
    assert isinstance(batch["id"][0], str) and batch["pid"][0].startswith("P")
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        b = next(iter(loader))
        assert b["image"].shape[1:] == (3, 32, 32) and "seed" not in b


def test_split_table_sizes_and_split_csv(tmp_path):
    dm = datamodule(tmp_path, in_channels=1)
    sizes = dm.subset_sizes()
    assert sum(sizes.values()) == 40 and min(sizes.values()) > 0
    table = dm.split_table()
    assert list(table.columns) == ["id", "pid", "label", "subset"]
    assert (table.groupby("pid")["subset"].nunique() == 1).all()
    assert len(dm.train_dataloader()) == sizes["train"] // 4  # drop_last
    assert len(dm.val_dataloader()) == -(-sizes["val"] // 4)
    written = pd.read_csv(dm.write_split(tmp_path / "run" / "split.csv"), dtype=str)
    assert list(written.columns) == ["id", "pid", "subset", "split"] and len(written) == 40
    assert set(written["split"]) == {"patient"}
    assert next(iter(dm.val_dataloader()))["image"].shape[1] == 1


def test_the_split_ignores_the_training_seed_but_order_and_augmentation_follow_it(tmp_path):
    def first_batch(seed: int, epoch: int = 0, **kwargs) -> dict:
        loader = datamodule(tmp_path, seed=seed, **kwargs).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))

    torch.manual_seed(123)  # the global generator plays no part
    first = first_batch(seed=0)
    torch.manual_seed(456)
    again = first_batch(seed=0, num_workers=2)
    assert again["id"] == first["id"] and torch.equal(again["image"], first["image"])
    assert datamodule(tmp_path, seed=1).split_table().equals(datamodule(tmp_path).split_table())
    for other in (first_batch(seed=1), first_batch(seed=0, epoch=1)):
        assert other["id"] != first["id"] and not torch.equal(other["image"], first["image"])


def test_a_slice_is_augmented_the_same_whatever_batch_or_worker_loads_it(tmp_path):
    def images_by_id(**kwargs) -> dict:
        loader = datamodule(tmp_path, **kwargs).train_dataloader()
        loader.sampler.set_epoch(2)
        return {i: x for b in loader for i, x in zip(b["id"], b["image"], strict=True)}

    single = images_by_id(batch_size=4)
    workers = images_by_id(batch_size=3, num_workers=2, persistent_workers=True)
    shared = single.keys() & workers.keys()
    assert len(shared) >= 20
    assert all(torch.equal(single[i], workers[i]) for i in shared)


def test_worker_loader_settings(tmp_path):
    dm = datamodule(tmp_path, num_workers=1, pin_memory=True, persistent_workers=True)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    ids = [i for b in loader for i in b["id"]]
    assert len(ids) == len(set(ids)) == dm.subset_sizes()["train"] // 4 * 4
    assert not datamodule(tmp_path, num_workers=0).train_dataloader().persistent_workers


def test_fold_split_from_the_source_folds(tmp_path):
    dm = datamodule(tmp_path, fold=3)
    table = dm.split_table()
    test_pids = set(table.loc[table.subset == "test", "pid"])
    folds = SyntheticSource(num_slices=40, num_patients=10, size=48).folds()
    assert {folds[i] for i in table.loc[table.subset == "test", "id"]} == {3}
    assert test_pids and not test_pids & set(table.loc[table.subset != "test", "pid"])


@pytest.mark.parametrize("name", ["synthetic", "figshare", "folder"])
def test_configs_instantiate(tmp_path, name):
    overrides = [f"data={name}", f"paths.data_dir={tmp_path}", "data.source.num_slices=20"]
    if name != "synthetic":
        overrides = overrides[:2] + ([f"data.root={tmp_path}"] if name == "folder" else [])
    cfg = compose(overrides)
    dm = instantiate(cfg.data)
    assert isinstance(dm, BrainTumorDataModule)
    assert dm.cache_dir == tmp_path / "cache" and dm.fractions == (0.7, 0.15, 0.15)
    if name == "synthetic":
        dm.setup()
        assert sum(dm.subset_sizes().values()) == 20
        assert np.isclose(dm.mean[0], 0.485)
