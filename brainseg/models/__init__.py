"""The two networks the study compares: U-Net and ResNet + FPN (SemanticFPN)."""

from brainseg.models.fpn import SemanticFPN
from brainseg.models.input_size import check_input_size
from brainseg.models.unet import UNet

__all__ = ["SemanticFPN", "UNet", "check_input_size"]
