"""`BrainTumorDataModule`: source -> cache -> split -> in-memory datasets -> loaders."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from brainseg.data.batch_augment import BatchAugment
from brainseg.data.cache import CachedData, build_cache, load_cache
from brainseg.data.device import DeviceEvalBatches, DeviceTrainBatches, uint8_on_device
from brainseg.data.sampler import EpochSampler, derive_seed
from brainseg.data.sources import Source
from brainseg.data.splits import (
    SUBSETS,
    check_fractions,
    make_split,
    resolve_mode,
    split_fingerprint,
    write_split_csv,
)
from brainseg.data.transforms import (
    SegmentationTransform,
    SlicePreprocessor,
    build_transforms,
    uint8_tensors,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENT_ON = ("auto", "loader", "device")
ON_DEVICE = ("auto", True, False)


class SliceDataset(Dataset):
    """Slices held in memory as uint8 arrays; items are dicts of tensors and metadata."""

    def __init__(
        self,
        data: CachedData,
        index: np.ndarray,
        transform: SegmentationTransform | Callable[..., tuple],
    ):
        # Views into the shared arrays plus an index: no copy, and forked workers share them.
        self.images, self.masks, self.index = data.images, data.masks, index
        self.ids = data.ids[index].tolist()
        self.pids = data.pids[index].tolist()
        self.labels = data.labels[index].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item `key`, or `(key, seed)` from `EpochSampler`: augmented with that seed."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        j = self.index[i]
        image, mask = self.transform(self.images[j], self.masks[j], seed=seed)
        item = {
            "image": image,
            "mask": mask,
            "id": self.ids[i],
            "pid": self.pids[i],
            "label": self.labels[i],
        }
        if seed is not None:
            item["seed"] = seed
        return item


class BrainTumorDataModule(pl.LightningDataModule):
    """Serves a source's slices at `image_size`, split into train/val/test.

    Batches are dicts: image (B, C, H, W) float32, mask (B, 1, H, W) float32 in {0, 1},
    id and pid (lists of str), label (B,) int64 (0 when unknown); training batches also carry
    each sample's augmentation seed, seed (B,) int64. With the augmentation on the device, the
    training loader yields uint8 image and mask (B, 1, H, W), which `on_after_batch_transfer`
    augments and normalises once they are on the model's device.

    The training order and every augmentation of an epoch depend on (seed, epoch) alone (see
    `EpochSampler`): the same whatever the number of workers, and after a resume.

    Args:
        source: where the slices come from (figshare, folder, synthetic).
        image_size: side of the square training slices.
        in_channels: 3 (grey replicated, for ImageNet backbones) or 1.
        cache_dir: folder of the converted arrays.
        split: "auto", "patient" or "image" (see `make_split`).
        fractions: train/val/test shares.
        split_seed: seed of the split, independent of the training seed.
        seed: the training seed, which fixes the order and augmentation of every epoch.
        fold: 1..5 to test on one cross-validation fold, None for the fractions split.
        batch_size: training batch size; eval_batch_size defaults to it.
        augment: augmentation settings (see `build_transforms`).
        augment_on: where training batches are augmented and normalised: "loader"
            (albumentations, per sample, in the loader's workers), "device" (`BatchAugment`,
            per batch, on the model's device) or "auto" (device with a CUDA trainer, else loader).
        mean, std: normalisation of the [0, 1] image per channel.
        root: the source's folder, kept for the config (data.root); unused here.
        on_device: keep the subsets on the model's device and draw batches there, without
            loader workers (`brainseg.data.device`): the same batches as `augment_on=device`.
            True, False or "auto" (on with a CUDA trainer when the augmentation is on the
            device).
    """

    def __init__(
        self,
        source: Source,
        image_size: int = 256,
        in_channels: int = 3,
        cache_dir: str | os.PathLike = "data/cache",
        split: str = "auto",
        fractions: Sequence[float] = (0.7, 0.15, 0.15),
        split_seed: int = 42,
        seed: int = 0,
        fold: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        augment: Mapping | None = None,
        augment_on: str = "loader",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        root: str | os.PathLike | None = None,
        on_device: bool | str = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.image_size = int(image_size)
        self.in_channels = int(in_channels)
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.fractions = tuple(float(f) for f in _plain(fractions))
        self.split_seed = int(split_seed)
        self.seed = int(seed)
        self.fold = fold
        self.batch_size = int(batch_size)
        # null means the training batch size; 0 is an error below, not a synonym of null
        self.eval_batch_size = int(batch_size if eval_batch_size is None else eval_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.augment = _plain(augment) or {}
        self.mean, self.std = list(_plain(mean)), list(_plain(std))
        self.root = root
        for key, value in (
            ("batch_size", self.batch_size),
            ("eval_batch_size", self.eval_batch_size),
        ):
            if value < 1:
                raise ValueError(f"data.{key}={value} must be a positive number of slices")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers} must be 0 (main process) or more")
        if fold is not None and (not isinstance(fold, int) or fold < 1):
            raise ValueError(f"data.fold={fold} must be a fold number (1..5) or null")
        check_fractions(self.fractions)
        if augment_on not in AUGMENT_ON:
            raise ValueError(
                f"data.augment_on={augment_on!r} is not one of {', '.join(AUGMENT_ON)}"
            )
        self.augment_on = augment_on
        if on_device not in ON_DEVICE:
            raise ValueError(f"data.on_device={on_device!r} is not one of true, false, auto")
        if on_device is True and augment_on == "loader":
            raise ValueError(
                "data.on_device=true draws training batches on the device and augments them "
                "there: set data.augment_on=device (or auto), or data.on_device=false"
            )
        self.on_device = on_device
        self._device_batches: dict[str, DeviceTrainBatches | DeviceEvalBatches] = {}
        # Fail at construction, not in a worker, on bad settings.
        build_transforms("train", self.augment, self.in_channels, self.mean, self.std)
        # Evaluation slices reach the network as any new slice does (predict, report, W&B).
        self.preprocessor = SlicePreprocessor(
            self.image_size, self.in_channels, self.mean, self.std
        )
        self.batch_augment = BatchAugment(self.augment, self.in_channels, self.mean, self.std)
        self.data: CachedData | None = None
        self.subsets: np.ndarray | None = None
        # The split `setup()` made, "patient" or "image" (never "auto"): what metrics record.
        self.split_mode: str | None = None
        self.datasets: dict[str, SliceDataset] = {}

    def prepare_data(self) -> None:
        """Download (if the source needs it) and convert once."""
        self.source.prepare()
        build_cache(self.source, self.image_size, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Load the cache into memory, split it and build the datasets (once)."""
        if self.data is not None:
            return
        self.data = load_cache(build_cache(self.source, self.image_size, self.cache_dir))
        self.split_mode = resolve_mode(
            self.split, self.data.ids, self.data.pids, pid_file=self.source.pid_file
        )
        self.subsets = make_split(
            self.data.ids,
            self.data.pids,
            mode=self.split_mode,
            fractions=self.fractions,
            seed=self.split_seed,
            fold=self.fold,
            folds=self.data.folds if self.fold is not None else None,
        )
        on_device = self.augments_on_device()
        for name in SUBSETS:
            if name == "train" and on_device:
                transform = uint8_tensors
            elif name == "train":
                transform = build_transforms(
                    name, self.augment, self.in_channels, self.mean, self.std
                )
            else:
                transform = self.preprocessor.transform
            index = np.flatnonzero(self.subsets == name)
            self.datasets[name] = SliceDataset(self.data, index, transform)

    def augments_on_device(self) -> bool:
        """Whether training batches are augmented on the model's device (see `augment_on`)."""
        if self.augment_on != "auto":
            return self.augment_on == "device"
        if self.trainer is not None:
            return self.trainer.strategy.root_device.type == "cuda"
        return torch.cuda.is_available()

    def data_on_device(self) -> bool:
        """Whether batches are drawn from arrays on the model's device (see `on_device`)."""
        if self.on_device != "auto":
            return bool(self.on_device)
        cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return cuda and self.augments_on_device()

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """One seed for a uint8 training batch's augmentation on the device, from its samples'
        (the on-device batches carry it already)."""
        if batch["image"].dtype == torch.uint8 and isinstance(batch["seed"], torch.Tensor):
            batch["seed"] = derive_seed(*batch["seed"].tolist())  # on the host: no device sync
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Augment and normalise the uint8 training batches of `augment_on=device`."""
        if batch["image"].dtype == torch.uint8:
            generator = torch.Generator().manual_seed(batch["seed"])
            batch["image"], batch["mask"] = self.batch_augment(
                batch["image"], batch["mask"], generator=generator
            )
        return batch

    def _sampler(self, dataset: SliceDataset, shuffle: bool):
        if shuffle:
            # Shuffled and augmented by (seed, epoch), each process its share (under DDP).
            trainer = self.trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
            sampler = EpochSampler(dataset, self.seed, num_replicas=world, rank=rank)
            # Lightning makes the first epoch's iterator (and workers fetch from it) before it
            # calls `set_epoch`, and before a resumed run's `current_epoch` counts the epoch the
            # checkpoint ended: give the sampler the epoch that Lightning is about to set.
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed if trainer else 0)
            return sampler
        if dist.is_available() and dist.is_initialized():
            # Lightning's DistributedSampler pads the evaluation sets with repeated slices to
            # equal shares; this one gives each slice to exactly one process, so that summed
            # metrics are exact whatever the number of processes.
            return UnrepeatedDistributedSampler(dataset, shuffle=False)
        return None

    def _loader(self, subset: str, batch_size: int, shuffle: bool):
        if not self.datasets:
            self.setup()
        dataset = self.datasets[subset]
        sampler = self._sampler(dataset, shuffle)
        if self.data_on_device():
            return self._on_device(subset, batch_size, sampler)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=shuffle and len(dataset) > batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            # Nothing left to draw from torch's global generator (the workers' base seed).
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _on_device(self, subset: str, batch_size: int, sampler) -> Any:
        """The subset's batches from arrays on the model's device, copied there once."""
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        dataset = self.datasets[subset]
        cached = self._device_batches.get(subset)
        if cached is None or cached.images.device != device:
            labels = torch.as_tensor(dataset.labels, dtype=torch.long).to(device)
            if subset == "train":
                if not self.augments_on_device():
                    raise ValueError(
                        "data.on_device needs the training augmentation on the device: set "
                        "data.augment_on=device (or auto), or data.on_device=false"
                    )
                images = uint8_on_device(self.data.images, dataset.index, device)
                masks = uint8_on_device(self.data.masks, dataset.index, device)
            else:  # the evaluation transform's outputs, made once on the host
                items = [dataset[i] for i in range(len(dataset))]
                images = torch.stack([item["image"] for item in items]).to(device)
                masks = torch.stack([item["mask"] for item in items]).to(device)
            cached = (images, masks, labels)
        else:
            cached = (cached.images, cached.masks, cached.labels)
        images, masks, labels = cached
        if subset == "train":
            drop_last = len(dataset) > batch_size
            batches = DeviceTrainBatches(
                images, masks, dataset.ids, dataset.pids, labels, sampler, batch_size, drop_last
            )
        else:
            batches = DeviceEvalBatches(
                images, masks, dataset.ids, dataset.pids, labels, batch_size, sampler
            )
        self._device_batches[subset] = batches
        return batches

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def split_table(self) -> pd.DataFrame:
        """One row per slice: id, pid, label, subset."""
        if self.data is None:
            self.setup()
        return pd.DataFrame(
            {
                "id": self.data.ids,
                "pid": self.data.pids,
                "label": self.data.labels,
                "subset": self.subsets,
            }
        )

    def write_split(self, path: str | os.PathLike) -> Path:
        """Write split.csv (id, pid, subset, split = "patient" or "image") to `path`."""
        table = self.split_table()
        return write_split_csv(path, table["id"], table["pid"], table["subset"], self.split_mode)

    def split_fingerprint(self) -> str:
        """sha256 of the (slice id, subset) assignment (see `splits.split_fingerprint`)."""
        if self.subsets is None:
            self.setup()
        return split_fingerprint(self.data.ids, self.subsets)

    def tumor_slices(self, subset: str) -> int:
        """Slices of `subset` with at least one tumor pixel."""
        if self.subsets is None:
            self.setup()
        masks = self.data.masks[np.flatnonzero(self.subsets == subset)]
        return int(masks.reshape(len(masks), -1).any(axis=1).sum())

    def state_dict(self) -> dict[str, str]:
        """Saved in every checkpoint: the split the network was trained on."""
        return {"split_fingerprint": self.split_fingerprint()}

    def load_state_dict(self, state_dict: dict[str, str]) -> None:
        """Refuses to resume training on another split than the checkpoint's: its former
        training slices could land in the test set. Testing a checkpoint (fit=false) on
        another split or fold is allowed."""
        saved = state_dict.get("split_fingerprint")
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if not fitting or saved is None or saved == self.split_fingerprint():
            return
        raise ValueError(
            f"the checkpoint was trained on another split of the data (split fingerprint "
            f"{saved[:12]}, this run's {self.split_fingerprint()[:12]}): resuming would put "
            "slices it trained on into validation or test. Resume with the checkpoint's own "
            "data settings (data.split_seed, data.fractions, data.fold, data.split and the "
            "source, as in its run's .hydra/overrides.yaml); to test the network on another "
            "split, use fit=false"
        )

    def subset_sizes(self) -> dict[str, int]:
        """Slices per subset."""
        if self.subsets is None:
            self.setup()
        return {name: int(np.sum(self.subsets == name)) for name in SUBSETS}


def _plain(value):
    """OmegaConf containers (from Hydra) to plain Python ones."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value
