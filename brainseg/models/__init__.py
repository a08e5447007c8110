"""brainseg's networks: the contract every network meets (`SegmentationNetwork`), the study's
U-Net and SemanticFPN, and the registry that builds any configured network by name. The
wrappers of other libraries (`smp_models`, `torchvision_models`, `monai_models`) are imported
by their configs' `_target_`, so importing brainseg.models loads none of those libraries."""

from brainseg.models.base import SegmentationNetwork, check_data_fits, count_flops
from brainseg.models.fpn import SemanticFPN
from brainseg.models.input_size import check_input_size
from brainseg.models.registry import build_network, get_network, list_networks, network_config
from brainseg.models.unet import UNet

__all__ = [
    "SegmentationNetwork",
    "SemanticFPN",
    "UNet",
    "build_network",
    "check_data_fits",
    "check_input_size",
    "count_flops",
    "get_network",
    "list_networks",
    "network_config",
]
