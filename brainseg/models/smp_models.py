"""Networks of segmentation_models_pytorch (smp): any architecture on any of its encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from huggingface_hub import hf_hub_download

from brainseg.models.backbone import load_weights_file
from brainseg.models.base import IMAGENET_STATS, SegmentationNetwork
from brainseg.models.weights import load_encoder_state


class SmpNetwork(SegmentationNetwork):
    """`smp.create_model(arch, encoder, ...)` with one output channel and no encoder weights;
    `load_pretrained` fetches smp's ImageNet encoder weights, or reads a local file.

    Input: ImageNet-normalised images when its ImageNet weights are loaded (`input_stats`),
    1 channel (kernels summed over RGB) or 3 (grey replicated).

    Args:
        arch: smp's architecture (``Unet``, ``UnetPlusPlus``, ``DeepLabV3Plus``, ``MAnet``,
            ``FPN``, ``Segformer``, ...; `smp.create_model` accepts any case).
        encoder: smp's encoder name (``resnet34``, ``mit_b0``, ``efficientnet-b0``, ...).
        in_channels: image channels.
        pretrained: load the ImageNet encoder weights now (the framework calls
            `load_pretrained` itself and leaves this off).
        weights_path: a local encoder state dict to load now instead.
        **kwargs: the architecture's own arguments (``decoder_channels``, ``encoder_depth``,
            ``decoder_attention_type``, ...).
    """

    pretrained_weights = "ImageNet encoder (smp, Hugging Face hub)"

    def __init__(
        self,
        arch: str,
        encoder: str = "resnet34",
        in_channels: int = 3,
        pretrained: bool = False,
        weights_path: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        model = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None,  # never a download while building
            in_channels=in_channels,
            classes=1,
            **kwargs,
        )
        super().__init__(in_channels, multiple=model.encoder.output_stride)
        self.arch, self.encoder_name = arch, encoder
        self.model = model
        if pretrained or weights_path is not None:
            self.load_pretrained(weights_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, 1, H, W); smp checks the size against its output stride

    def load_pretrained(self, path: str | Path | None = None) -> None:
        """smp's ImageNet weights of the encoder (Hugging Face hub cache, else downloaded), or
        the encoder state dict in `path` (smp's ``model.safetensors``, or a torchvision
        classification checkpoint of the same network: its head is ignored)."""
        if path is None:
            path, source = self._download_imagenet(), f"smp {self.encoder_name} ImageNet weights"
        else:
            source = str(path)
        state = load_weights_file(path)
        load_encoder_state(self.model.encoder, state, source)
        self.input_stats = IMAGENET_STATS

    def _download_imagenet(self) -> str:
        settings = smp.encoders.encoders.get(self.encoder_name, {}).get("pretrained_settings", {})
        if "imagenet" not in settings:
            raise ValueError(
                f"smp encoder {self.encoder_name} has no ImageNet weights "
                f"(it has {sorted(settings)}); set pretrained=false"
            )
        repo, revision = settings["imagenet"]["repo_id"], settings["imagenet"]["revision"]
        try:
            return hf_hub_download(repo, filename="model.safetensors", revision=revision)
        except Exception as err:  # offline, or the hub unreachable: say how to go on
            raise RuntimeError(
                f"could not get the ImageNet weights of {self.encoder_name} from the Hugging "
                f"Face hub ({repo}): {err}. Without internet, set pretrained=false, or "
                f"model.weights_path=/path/to/model.safetensors (download it from "
                f"https://huggingface.co/{repo} where there is internet)"
            ) from err
