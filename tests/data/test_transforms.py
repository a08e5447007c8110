import numpy as np
import pytest
import torch
from torch.nn.functional import max_pool2d

from brainseg.data.transforms import build_transforms

STRONG = {
    "hflip": 0.5,
    "vflip": 0.5,
    "affine": {"p": 1.0, "rotate": 30, "scale": 0.2, "shift": 0.1},
    "brightness_contrast": {"p": 1.0, "brightness": 0.2, "contrast": 0.2},
}


def blobs(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image whose bright pixels are exactly the mask (asymmetric shapes)."""
    mask = np.zeros((size, size), np.uint8)
    mask[8:20, 10:40] = 1
    mask[30:56, 44:52] = 1
    image = np.where(mask == 1, 220, 30).astype(np.uint8)
    return image, mask


def test_image_and_mask_are_transformed_alike():
    transform = build_transforms("train", STRONG, 1, [0.0], [1.0])
    image, mask = blobs()
    moved = 0
    for _ in range(30):
        x, y = transform(image, mask)
        bright = x[0] > 0.5  # 220/255 minus brightness/contrast changes stays above 0.5
        inside = y[0] == 1
        # Pixels off the mask border must agree; interpolation may blur a one-pixel rim.
        m = inside[None].float()
        edge = (max_pool2d(m, 3, 1, 1) - -max_pool2d(-m, 3, 1, 1))[0] > 0
        agree = (bright == inside) | edge
        assert agree.float().mean() > 0.999
        moved += int(not torch.equal(y[0], torch.from_numpy(mask).float()))
    assert moved > 20  # the augmentation did move things


def test_train_output_types_and_binary_mask():
    transform = build_transforms("train", STRONG, 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x, y = transform(*blobs(32))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (1, 32, 32) and y.dtype == torch.float32
    assert set(y.unique().tolist()) <= {0.0, 1.0}


def test_eval_is_normalisation_only():
    image, mask = blobs(16)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for stage in ("val", "test", "predict"):
        x, y = build_transforms(stage, STRONG, 3, mean, std)(image, mask)
        expected = (image / 255.0 - mean[1]) / std[1]
        np.testing.assert_allclose(x[1].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(y[0].numpy(), mask)
        assert torch.allclose(
            x[0] * std[0] + mean[0], x[2] * std[2] + mean[2], atol=1e-6
        )  # grey replicated


def test_one_channel_uses_the_mean_statistics():
    image, mask = blobs(16)
    x, _ = build_transforms("val", None, 1, [0.2, 0.4, 0.6], [0.1, 0.2, 0.3])(image, mask)
    assert x.shape == (1, 16, 16)
    np.testing.assert_allclose(x[0].numpy(), (image / 255.0 - 0.4) / 0.2, rtol=1e-5)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"unknown data\.augment keys \['rotate'\]"):
        build_transforms("train", {"rotate": 10}, 3, [0.5], [0.5])
    with pytest.raises(ValueError, match=r"data\.in_channels=2"):
        build_transforms("val", None, 2, [0.5], [0.5])
    with pytest.raises(ValueError, match=r"data\.mean has 2 values for in_channels=3"):
        build_transforms("val", None, 3, [0.5, 0.5], [0.5])
