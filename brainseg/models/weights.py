"""Pretrained encoder weights into a library's encoder: channel adaptation and a strict load
that names what does not fit. Used by the wrappers of segmentation_models_pytorch and
torchvision; the study's ResNet backbone has its own, `backbone.load_resnet_state`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# Classifier heads of ImageNet checkpoints: no segmentation encoder has them.
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.")


def check_state_fits(
    given: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str, fix: str
) -> None:
    """A RuntimeError (`what`, the missing, unexpected and misshapen keys, then `fix`) unless
    `given` holds every tensor of `expected` in its shape. Missing BatchNorm
    `num_batches_tracked` counters are tolerated (older checkpoints)."""
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in given.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise RuntimeError(
            f"{what}: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(wrong)} shape mismatches {wrong[:5]}. {fix}"
        )


def adapt_input_channels(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Fits RGB input kernels of `state` to the channels of `expected` (the encoder's own
    state), by the rule of torchvision's and smp's channel adaptation: 1 channel sums the RGB
    kernels (a grey image replicated to RGB gives the same response); more average them,
    repeat and scale by 3 / channels."""
    adapted = dict(state)
    for key, weight in state.items():
        target = expected.get(key)
        if target is None or weight.dim() != 4 or target.dim() != 4:
            continue
        if weight.shape[1] == 3 and target.shape[1] != 3 and weight.shape[0] == target.shape[0]:
            channels = target.shape[1]
            if channels == 1:
                adapted[key] = weight.sum(dim=1, keepdim=True)
            else:
                mean = weight.mean(dim=1, keepdim=True)
                adapted[key] = mean.repeat(1, channels, 1, 1) * 3 / channels
    return adapted


def load_encoder_state(
    encoder: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    strip: tuple[str, ...] = (),
) -> None:
    """Loads every tensor of `encoder` from `state` (classifier heads ignored, `strip` prefixes
    removed, input kernels fitted to the encoder's channels), or raises a RuntimeError naming
    the missing, unexpected and mis-shaped keys and the file (`source`) they came from."""
    given = {}
    for key, value in state.items():
        for prefix in strip:
            key = key.removeprefix(prefix)
        if not key.startswith(HEAD_PREFIXES):
            given[key] = value
    expected = encoder.state_dict()
    given = adapt_input_channels(given, expected)
    check_state_fits(
        given, expected, f"{source} does not fit the encoder",
        "Check that the model's encoder is the one the file was saved from",
    )  # fmt: skip
    encoder.load_state_dict(given, strict=False)
