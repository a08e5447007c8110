import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from brainseg.data import BrainTumorDataModule
from brainseg.data.batch_augment import BatchAugment, affine_matrices, warp
from brainseg.data.synthetic import SyntheticSource
from brainseg.data.transforms import build_transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT = {
    "hflip": 0.5,
    "vflip": 0.0,
    "affine": {"p": 0.5, "rotate": 15, "scale": 0.1, "shift": 0.05},
    "brightness_contrast": {"p": 0.3, "brightness": 0.1, "contrast": 0.1},
}


def slices(n: int = 8, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose bright pixels are exactly the (asymmetric) lesion of the mask."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for mask in masks:
        r, c = rng.integers(8, size - 24, size=2)
        mask[r : r + 6, c : c + 20] = 1
        mask[r : r + 18, c + 12 : c + 18] = 1
    images = (masks * 180 + 40).astype(np.uint8)
    return images, masks


def batch(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(images)[:, None], torch.from_numpy(masks)[:, None]


def loader_path(images, masks, in_channels=3):
    """What the albumentations path makes of the slices without augmentation."""
    transform = build_transforms("val", None, in_channels, MEAN, STD)
    pairs = [transform(i, m) for i, m in zip(images, masks, strict=True)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


@pytest.mark.parametrize("in_channels", [1, 3])
def test_without_augmentation_it_normalises_as_the_loader_path(in_channels):
    images, masks = slices()
    expected_x, expected_y = loader_path(images, masks, in_channels)
    x, y = BatchAugment(DEFAULT, in_channels, MEAN, STD)(*batch(images, masks), augment=False)
    assert x.dtype == torch.float32 and x.shape == expected_x.shape
    torch.testing.assert_close(x, expected_x, atol=1e-6, rtol=0)
    torch.testing.assert_close(y, expected_y)


@pytest.mark.parametrize("key,dim", [("hflip", -1), ("vflip", -2)])
def test_certain_flips_flip_image_and_mask_together(key, dim):
    images, masks = slices()
    expected_x, expected_y = loader_path(images, masks)
    x, y = BatchAugment({key: 1.0}, 3, MEAN, STD)(*batch(images, masks))
    torch.testing.assert_close(x, expected_x.flip(dim), atol=1e-6, rtol=0)
    torch.testing.assert_close(y, expected_y.flip(dim))


@pytest.mark.parametrize(
    "angle,scale,shift",
    [(0.0, (1.0, 1.0), (0.0, 0.0)), (15.0, (1.0, 1.0), (0.0, 0.0)),
     (-12.0, (1.1, 1.1), (0.125, 0.0)), (30.0, (0.8, 0.8), (0.0, -0.0625)),
     (0.0, (0.9, 1.1), (0.0625, 0.125)), (20.0, (1.1, 0.9), (0.0, 0.0))],
)  # fmt: skip
def test_affine_warp_follows_albumentations_conventions(angle, scale, shift):
    # Whole-pixel shifts: albumentations truncates the translation to pixels, the batch path not.
    images, masks = slices(n=1)
    reference = A.Affine(
        rotate=(angle, angle),
        scale={"x": (scale[0], scale[0]), "y": (scale[1], scale[1])},
        translate_percent={"x": (shift[0], shift[0]), "y": (shift[1], shift[1])},
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=0,
        p=1.0,
    )(image=images[0], mask=masks[0])
    theta = affine_matrices(torch.tensor([angle]), torch.tensor([scale]), torch.tensor([shift]))
    image, mask = batch(images, masks)
    x, y = warp(image.float() / 255, mask.float(), theta)
    image_error = np.abs(x[0, 0].numpy() * 255 - reference["image"].astype(np.float64))
    assert image_error.mean() < 0.1  # grey levels, out of 255
    ours, theirs = y[0, 0].numpy() > 0.5, reference["mask"] > 0
    assert (ours & theirs).sum() / (ours | theirs).sum() > 0.99


def test_default_augmentation_keeps_masks_binary_and_aligned_with_images():
    images, masks = slices(n=64)
    torch.manual_seed(0)
    augment = BatchAugment(DEFAULT, 1, (0.0,), (1.0,))  # identity normalisation: x in [0, 1]
    x, y = augment(*batch(images, masks))
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
    assert x.min() >= 0 and x.max() <= 1
    # Lesion pixels are bright (0.86 before brightness/contrast), the rest dark or zero fill.
    bright, lesion = x > 0.5, y > 0.5
    assert (bright & lesion).sum() / (bright | lesion).sum() > 0.95
    changed = (y != batch(images, masks)[1].float()).flatten(1).any(1)
    assert 0 < changed.sum() < len(changed)  # some slices moved, some stayed


def test_brightness_contrast_is_an_affine_map_of_grey_levels_within_the_limits():
    images, masks = slices(n=32)
    images = images // 2 + np.random.default_rng(1).integers(0, 60, images.shape, dtype=np.uint8)
    limits = {"p": 1.0, "brightness": 0.1, "contrast": 0.2}
    torch.manual_seed(0)
    x, _ = BatchAugment({"brightness_contrast": limits}, 1, (0.0,), (1.0,))(*batch(images, masks))
    before = torch.from_numpy(images).float() / 255
    for original, augmented in zip(before, x[:, 0], strict=True):
        inside = (augmented > 0) & (augmented < 1)  # not clipped
        design = torch.stack([original[inside], torch.ones(int(inside.sum()))], dim=1)
        (alpha, beta), *_ = torch.linalg.lstsq(design.double(), augmented[inside, None].double())
        assert abs(alpha.item() - 1) <= 0.2 + 1e-4 and abs(beta.item()) <= 0.1 + 1e-4
        fitted = design.double() @ torch.stack([alpha, beta]).double()
        assert (fitted.squeeze(1) - augmented[inside]).abs().max() < 1e-5


def test_probabilities_are_respected():
    images, masks = slices(n=400, size=48)
    torch.manual_seed(0)
    x, _ = BatchAugment({"hflip": 0.5}, 1, (0.0,), (1.0,))(*batch(images, masks))
    original = torch.from_numpy(images).float()[:, None] / 255
    flipped = (x != original).flatten(1).any(1).float().mean().item()
    assert 0.4 < flipped < 0.6


def test_same_torch_seed_same_batch():
    images, masks = slices()
    augment = BatchAugment(DEFAULT, 3, MEAN, STD)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(augment(*batch(images, masks)))
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    assert not torch.equal(runs[0][0], runs[2][0])


def test_float_batches_are_refused_with_the_setting_that_makes_uint8():
    images, masks = slices()
    x, y = loader_path(images, masks)
    with pytest.raises(ValueError, match="augment_on=device"):
        BatchAugment(DEFAULT, 3, MEAN, STD)(x, y)


def datamodule(tmp_path, augment_on: str) -> BrainTumorDataModule:
    return BrainTumorDataModule(
        SyntheticSource(num_slices=24, num_patients=6, size=48),
        image_size=32,
        cache_dir=tmp_path / "cache",
        batch_size=4,
        num_workers=0,
        augment=DEFAULT,
        augment_on=augment_on,
    )


def test_device_path_loader_yields_uint8_and_the_transfer_hook_finishes_the_batch(tmp_path):
    dm = datamodule(tmp_path, "device")
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    assert raw["image"].dtype == torch.uint8 and raw["image"].shape == (4, 1, 32, 32)
    assert raw["mask"].dtype == torch.uint8
    done = dm.on_after_batch_transfer(dm.on_before_batch_transfer(dict(raw), 0), 0)
    assert done["image"].dtype == torch.float32 and done["image"].shape == (4, 3, 32, 32)
    assert done["mask"].dtype == torch.float32 and done["mask"].shape == (4, 1, 32, 32)
    # Evaluation batches are normalised in the loader, as before, and pass the hook untouched.
    val = next(iter(dm.val_dataloader()))
    assert val["image"].dtype == torch.float32
    hooks = dm.on_after_batch_transfer(dm.on_before_batch_transfer(dict(val), 0), 0)
    assert hooks["image"] is val["image"]


def test_auto_augments_in_the_loader_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dm = datamodule(tmp_path, "auto")
    assert not dm.augments_on_device()
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].dtype == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert datamodule(tmp_path, "auto").augments_on_device()


def test_unknown_augment_on_is_named(tmp_path):
    with pytest.raises(ValueError, match="data.augment_on='gpu'.*auto, loader, device"):
        datamodule(tmp_path, "gpu")


def test_a_batch_is_augmented_by_its_samples_seeds_alone(tmp_path):
    # Not by the global generator, nor by the process: DDP processes load different slices,
    # hence different seeds, and a resumed run draws what the uninterrupted one drew.
    dm = datamodule(tmp_path, "device")
    dm.setup("fit")
    loader = dm.train_dataloader()
    first, second = list(loader)[:2]

    def augment(raw: dict, global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        return dm.on_after_batch_transfer(dm.on_before_batch_transfer(dict(raw), 0), 0)["image"]

    torch.testing.assert_close(augment(first, 0), augment(first, 1), atol=0, rtol=0)
    other = dict(first, seed=second["seed"])  # the same slices with other seeds
    assert not torch.equal(augment(first, 0), augment(other, 0))


def test_both_paths_augment_the_same_amount_at_the_default_settings():
    # The same 512 slices through albumentations and through the batch path: how much the images
    # change, how much zero fill comes in and how much lesion stays agree within sampling noise.
    images, masks = slices(n=512, size=64, seed=2)
    images = np.clip(
        images.astype(int) + np.random.default_rng(3).integers(-30, 30, images.shape), 0, 255
    )
    images = images.astype(np.uint8)
    torch.manual_seed(0)
    transform = build_transforms("train", DEFAULT, 1, (0.0,), (1.0,))
    pairs = [transform(i, m) for i, m in zip(images, masks, strict=True)]
    loader = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
    generator = torch.Generator().manual_seed(0)
    device = BatchAugment(DEFAULT, 1, (0.0,), (1.0,))(*batch(images, masks), generator=generator)
    original, lesion = batch(images, masks)
    original = original.float() / 255

    def summary(x, y):
        return {
            "changed": (x - original).abs().mean().item(),
            "zero_fill": (x == 0).float().mean().item(),
            "lesion_kept": (y.sum() / lesion.sum()).item(),
        }

    ours, theirs = summary(*device), summary(*loader)
    assert ours["changed"] == pytest.approx(theirs["changed"], rel=0.15)
    assert ours["zero_fill"] == pytest.approx(theirs["zero_fill"], abs=0.01)
    assert ours["lesion_kept"] == pytest.approx(theirs["lesion_kept"], abs=0.02)
