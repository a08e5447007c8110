"""Segmentation losses for binary masks, computed from logits.

Every loss takes ``logits`` of shape (B, 1, H, W) (any dtype, any device) and a ``target`` of the
same shape holding {0, 1} (float, bool or integer). A target of shape (B, H, W) is accepted when
the logits have a single channel and is unsqueezed to (B, 1, H, W); any other mismatch is an error.

All arithmetic runs in float32 with autocast disabled, so bf16/fp16 mixed precision never makes
a loss inf or nan, even for extreme logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_REDUCTIONS = ("mean", "sum", "none")


def _prepare(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes and return (logits, target) as float32 tensors of the same shape."""
    if target.shape != logits.shape:
        one_channel = logits.ndim == 4 and logits.shape[1] == 1
        if one_channel and target.ndim == 3 and target.shape == logits.shape[:1] + logits.shape[2:]:
            target = target.unsqueeze(1)
        else:
            raise ValueError(
                f"target shape {tuple(target.shape)} does not match logits shape "
                f"{tuple(logits.shape)}; pass a target of shape {tuple(logits.shape)} "
                "(or (B, H, W) when the logits have one channel)"
            )
    return logits.float(), target.float()


def _check_non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}; use 0 to switch the term off")


class DiceLoss(nn.Module):
    """Soft Dice loss on sigmoid probabilities: 1 - (2|P∩T| + s) / (|P| + |T| + s).

    ``s`` (``smooth``) is added to numerator and denominator: it makes the loss defined (0) when
    prediction and target are both empty and keeps its gradient finite there. The study's
    formula has no smoothing; with s = 1 and tens of thousands of pixels per batch the
    difference is negligible, except that an empty target now pulls predictions towards 0.

    Args:
        smooth: additive smoothing s (>= 0).
        per_image: False pools the sums over the whole batch (one Dice for the batch);
            True computes one loss per image and averages them.
    """

    def __init__(self, smooth: float = 1.0, per_image: bool = False) -> None:
        super().__init__()
        _check_non_negative("smooth", smooth)
        self.smooth = float(smooth)
        self.per_image = per_image

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            logits, target = _prepare(logits, target)
            probs = torch.sigmoid(logits)
            dims = tuple(range(1, logits.ndim)) if self.per_image else tuple(range(logits.ndim))
            intersection = (probs * target).sum(dims)
            denominator = probs.sum(dims) + target.sum(dims)
            dice = (2 * intersection + self.smooth) / (denominator + self.smooth).clamp_min(1e-12)
            return (1 - dice).mean()


class FocalLoss(nn.Module):
    """Binary focal loss -α_t (1 - p_t)^γ log p_t (Lin et al., 2017), from logits.

    ``log p_t`` is taken as ``-BCE-with-logits`` (stable for any logit); p_t = exp(log p_t).

    Args:
        gamma: focusing parameter γ >= 0; γ = 0 with ``alpha=None`` is plain BCE.
        alpha: weight of the positive class in [0, 1] (negatives get 1 - alpha); None weighs
            both classes 1.
        reduction: "mean" (over all pixels), "sum" or "none" (per-pixel map).
    """

    def __init__(
        self, gamma: float = 2.0, alpha: float | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        _check_non_negative("gamma", gamma)
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            logits, target = _prepare(logits, target)
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            # 1 - p_t, clamped away from 0 so the gradient of x**γ stays finite for γ < 1.
            one_minus_pt = (-torch.expm1(-bce)).clamp_min(torch.finfo(torch.float32).tiny)
            loss = one_minus_pt.pow(self.gamma) * bce
            if self.alpha is not None:
                loss = (self.alpha * target + (1 - self.alpha) * (1 - target)) * loss
            if self.reduction == "mean":
                return loss.mean()
            return loss.sum() if self.reduction == "sum" else loss


class BCELoss(nn.Module):
    """Binary cross-entropy on logits (mean over pixels).

    Args:
        pos_weight: weight of positive pixels (> 0), e.g. the negative/positive pixel ratio;
            None weighs both classes 1.
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        if pos_weight is not None and pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0 or None, got {pos_weight}")
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            logits, target = _prepare(logits, target)
            pos_weight = None
            if self.pos_weight is not None:
                pos_weight = torch.tensor(self.pos_weight, device=logits.device)
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)


class DiceFocalLoss(nn.Module):
    """The study's loss, λ_d · DiceLoss + λ_f · FocalLoss (its α · Dice + β · Focal).

    The study gives neither weights nor γ; the defaults λ_d = 1, λ_f = 1, γ = 2 (the focal
    paper's γ) are brainseg's choice. The Dice term is pooled over the batch; the focal term is
    the mean over pixels.

    Args:
        lambda_dice: weight of the Dice term (>= 0).
        lambda_focal: weight of the focal term (>= 0); not both weights may be 0.
        gamma: focal γ (>= 0).
        focal_alpha: focal α in [0, 1], or None for no class weighting.
        smooth: Dice smoothing (see DiceLoss).
    """

    def __init__(
        self,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        gamma: float = 2.0,
        focal_alpha: float | None = None,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        _check_non_negative("lambda_dice", lambda_dice)
        _check_non_negative("lambda_focal", lambda_focal)
        if lambda_dice == 0 and lambda_focal == 0:
            raise ValueError(
                "lambda_dice and lambda_focal are both 0, so the loss would be constant; "
                "set at least one of them > 0"
            )
        self.lambda_dice = float(lambda_dice)
        self.lambda_focal = float(lambda_focal)
        self.dice = DiceLoss(smooth=smooth)
        self.focal = FocalLoss(gamma=gamma, alpha=focal_alpha)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_focal * self.focal(
            logits, target
        )
