"""torchvision ResNet backbones returning C2..C5, with ImageNet or local-file weights."""

from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum
from torchvision.models.feature_extraction import create_feature_extractor

from brainseg.models.weights import check_state_fits

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# Stages C2..C5 are the outputs of layer1..layer4 (strides 4, 8, 16, 32).
RETURN_NODES = {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}
# Prefixes stripped from the keys of a weights file, so that checkpoints which wrap the
# ResNet (DataParallel, a Lightning module, a detection or segmentation model) also load.
KEY_PREFIXES = ("module.", "model.", "backbone.", "body.", "encoder.")
NO_WEIGHTS_FIX = (
    "set model.pretrained=false to train from random weights, or "
    "model.weights_path=/path/to/{name}.pth to load a local torchvision state dict"
)


def resnet_features(
    name: str = "resnet50",
    in_channels: int = 3,
    pretrained: bool = True,
    weights_path: str | Path | None = None,
) -> tuple[nn.Module, list[int]]:
    """Build a torchvision ResNet that returns ``{"c2": ..., "c5": ...}``.

    Args:
        name: one of ``RESNETS``.
        in_channels: input channels; other than 3, conv1 is rebuilt and, when weights are
            loaded, its RGB kernels are summed (1 channel) or averaged and repeated (more).
        pretrained: load torchvision's default ImageNet weights (cached in the torch hub
            cache, ``$TORCH_HOME/hub/checkpoints``).
        weights_path: a local ResNet state dict; when given, it is loaded instead of the
            download, whatever ``pretrained`` says.

    Returns:
        The feature extractor and the channels of C2..C5.
    """
    if name not in RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list(RESNETS)}")
    net = torchvision.models.get_model(name, weights=None)
    c5 = net.fc.in_features
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    state = None
    if weights_path is not None:
        state = load_weights_file(weights_path)
        source = str(weights_path)
    elif pretrained:
        state = download_imagenet_weights(name)
        source = f"torchvision {name} ImageNet weights"
    if state is not None:
        state = adapt_first_conv(state, in_channels)
        load_resnet_state(net, state, source)
    features = create_feature_extractor(net, return_nodes=RETURN_NODES)
    return features, [c5 // 8, c5 // 4, c5 // 2, c5]


def download_imagenet_weights(
    name: str, weights: WeightsEnum | None = None
) -> dict[str, torch.Tensor]:
    """Torchvision's ImageNet weights of network ``name`` (its default ones unless ``weights``
    names others), from the hub cache or downloaded.

    Raises:
        RuntimeError: when they are neither cached nor downloadable; it names both fixes.
    """
    weights = weights or torchvision.models.get_model_weights(name).DEFAULT
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as err:
        raise RuntimeError(
            f"could not get the ImageNet weights {weights} ({weights.url}): {err}. "
            "Without internet, "
            + NO_WEIGHTS_FIX.format(name=name)
            + f" (download it where there is internet; torch hub caches it under "
            f"{torch.hub.get_dir()}/checkpoints)"
        ) from err


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict (a ResNet's, or another encoder's) from ``path``.

    Accepts a ``.safetensors`` file, a plain state dict, a checkpoint holding one under
    ``"state_dict"`` or ``"model"``, and keys carrying any of the prefixes in ``KEY_PREFIXES``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist; fix model.weights_path or set "
            "model.weights_path=null (with model.pretrained=true to download)"
        )
    if path.suffix == ".safetensors":  # the form the Hugging Face hub serves (smp's weights)
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {_strip_prefixes(k): v for k, v in state.items()}


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def adapt_first_conv(state: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """Fit conv1's kernels to ``in_channels``, keeping the response to a grey image.

    1 channel: sum over RGB (a grey image replicated to RGB gives the same output).
    More channels: average RGB, repeat, and scale by 3 / in_channels.
    """
    weight = state.get("conv1.weight")
    if weight is None or weight.shape[1] == in_channels:
        return state
    if in_channels == 1:
        weight = weight.sum(dim=1, keepdim=True)
    else:
        weight = weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * 3 / in_channels
    return {**state, "conv1.weight": weight}


def load_resnet_state(net: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` (the classifier ``fc`` is ignored), or raise naming the keys.

    Missing BatchNorm ``num_batches_tracked`` counters are tolerated (older checkpoints).
    """
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    given = {k: v for k, v in state.items() if not k.startswith("fc.")}
    check_state_fits(
        given, expected, f"{source} does not fit the backbone",
        "Check that model.backbone names the ResNet the file was saved from "
        f"(key prefixes {list(KEY_PREFIXES)} are stripped)",
    )  # fmt: skip
    net.load_state_dict(given, strict=False)
