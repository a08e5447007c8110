"""Input checks shared by the networks."""

import torch


def check_input_size(x: torch.Tensor, multiple: int = 32) -> None:
    """Raise a ValueError unless ``x`` is (B, C, H, W) with H and W divisible by ``multiple``.

    Reads only the shape (python ints), so it costs nothing, never syncs with the device
    and traces cleanly under ``torch.compile``.

    Args:
        x: the network input.
        multiple: the network's total downsampling factor.
    """
    if x.dim() != 4:
        raise ValueError(
            f"expected a 4-D input (B, C, H, W), got shape {tuple(x.shape)}; "
            "add a batch dimension with x.unsqueeze(0)"
        )
    h, w = x.shape[-2], x.shape[-1]
    if h % multiple or w % multiple:
        h_ok = -(-h // multiple) * multiple
        w_ok = -(-w // multiple) * multiple
        raise ValueError(
            f"input {h}x{w} is not divisible by {multiple}; pad or resize to {h_ok}x{w_ok}"
        )


def check_channels(x: torch.Tensor, in_channels: int) -> None:
    """Raise a ValueError when the input's channels are not those the network was built for."""
    if x.shape[1] != in_channels:
        raise ValueError(
            f"input has {x.shape[1]} channels but the model was built with "
            f"in_channels={in_channels}; set data.in_channels to match the data "
            "(model configs follow it)"
        )


def check_image_size(image_size: int, multiple: int, model: str) -> None:
    """Raise a ValueError, naming `data.image_size` and the nearest valid sizes, unless
    `image_size` is a positive multiple of the network's `multiple`."""
    if image_size < 1 or image_size % multiple:
        below = max(multiple, image_size // multiple * multiple)
        above = max(multiple, -(-image_size // multiple) * multiple)
        sizes = f"{below}" if below == above else f"{below} or {above}"
        raise ValueError(
            f"data.image_size={image_size}: model {model} needs a multiple of {multiple}; "
            f"use data.image_size={sizes}"
        )
