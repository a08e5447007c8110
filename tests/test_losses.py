import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from brainseg.losses import BCELoss, DiceFocalLoss, DiceLoss, FocalLoss

LOSS_CONF = Path(__file__).resolve().parents[1] / "conf" / "loss"
LN3 = math.log(3.0)  # sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25


def _grid(values, shape=(1, 1, 2, 2)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(shape)


# ---------------------------------------------------------------- hand-computed values


def test_dice_hand_computed():
    logits = _grid([LN3, LN3, -LN3, -LN3])  # p = .75 .75 .25 .25
    target = _grid([1, 0, 0, 1])
    # |P∩T| = .75 + .25 = 1, |P| = 2, |T| = 2
    assert DiceLoss(smooth=0)(logits, target).item() == pytest.approx(1 - 2 / 4)
    assert DiceLoss(smooth=1)(logits, target).item() == pytest.approx(1 - (2 + 1) / (4 + 1))


def test_dice_pooled_vs_per_image():
    logits = torch.zeros(2, 1, 2, 2)  # p = 0.5 everywhere
    target = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    # image 0: ∩ = 2, |P| = 2, |T| = 4 -> 1 - 5/7; image 1: ∩ = 0, |P| = 2, |T| = 0 -> 1 - 1/3
    per_image = ((1 - 5 / 7) + (1 - 1 / 3)) / 2
    # pooled: ∩ = 2, |P| = 4, |T| = 4 -> 1 - 5/9
    assert DiceLoss(per_image=True)(logits, target).item() == pytest.approx(per_image)
    assert DiceLoss()(logits, target).item() == pytest.approx(1 - 5 / 9)


def test_focal_hand_computed():
    logits = _grid([0.0, LN3, LN3, -LN3])
    target = _grid([1, 1, 0, 0])
    # p_t = .5, .75, .25, .75; -log p_t = ln 2, ln 4/3, ln 4, ln 4/3
    terms = [
        0.5**2 * math.log(2),
        0.25**2 * math.log(4 / 3),
        0.75**2 * math.log(4),
        0.25**2 * math.log(4 / 3),
    ]
    assert FocalLoss(gamma=2)(logits, target).item() == pytest.approx(sum(terms) / 4)
    alpha_t = [0.25, 0.25, 0.75, 0.75]  # alpha for positives, 1 - alpha for negatives
    weighted = sum(a * t for a, t in zip(alpha_t, terms, strict=True)) / 4
    assert FocalLoss(gamma=2, alpha=0.25)(logits, target).item() == pytest.approx(weighted)
    assert FocalLoss(reduction="sum")(logits, target).item() == pytest.approx(sum(terms))
    assert FocalLoss(reduction="none")(logits, target).shape == (1, 1, 2, 2)


def test_focal_gamma0_is_bce():
    logits = torch.randn(3, 1, 8, 8) * 4
    target = (torch.rand(3, 1, 8, 8) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(FocalLoss(gamma=0)(logits, target), expected, atol=1e-6)
    assert torch.allclose(BCELoss()(logits, target), expected, atol=1e-6)


def test_bce_pos_weight_hand_computed():
    logits = _grid([0.0, 0.0], shape=(1, 1, 1, 2))
    target = _grid([1, 0], shape=(1, 1, 1, 2))
    # positive pixel: 3 * ln 2, negative pixel: ln 2
    assert BCELoss(pos_weight=3)(logits, target).item() == pytest.approx(4 * math.log(2) / 2)


def test_dice_focal_is_sum_of_parts():
    logits = torch.randn(4, 1, 16, 16) * 3
    target = (torch.rand(4, 1, 16, 16) > 0.7).float()
    loss = DiceFocalLoss(lambda_dice=0.3, lambda_focal=2.0, gamma=1.5, focal_alpha=0.4, smooth=0.5)
    parts = 0.3 * DiceLoss(smooth=0.5)(logits, target) + 2.0 * FocalLoss(1.5, 0.4)(logits, target)
    assert torch.allclose(loss(logits, target), parts)
    assert loss(logits, target).ndim == 0


# ---------------------------------------------------------------- edge cases


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_perfect_prediction_gives_zero_dice(fill):
    target = torch.full((2, 1, 4, 4), fill)
    logits = (target * 2 - 1) * 100  # sigmoid is exactly 0 or 1 in float32
    # with smooth s: (2|T| + s) / (2|T| + s) = 1, also when both masks are empty
    assert DiceLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert FocalLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)


def test_empty_target_full_prediction():
    target = torch.zeros(1, 1, 4, 4)
    logits = torch.full((1, 1, 4, 4), 100.0)
    # ∩ = 0, |P| = 16, |T| = 0 -> 1 - 1/17
    assert DiceLoss()(logits, target).item() == pytest.approx(1 - 1 / 17)


def test_target_without_channel_and_bool_target():
    logits = torch.randn(2, 1, 5, 7)
    target = torch.rand(2, 1, 5, 7) > 0.5
    for loss in (DiceLoss(), FocalLoss(), BCELoss(), DiceFocalLoss()):
        expected = loss(logits, target.float())
        assert torch.allclose(loss(logits, target[:, 0].float()), expected)
        assert torch.allclose(loss(logits, target), expected)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("build", "bad"),
    [
        (lambda: DiceLoss(smooth=-1), "-1"),
        (lambda: FocalLoss(gamma=-0.5), "-0.5"),
        (lambda: FocalLoss(alpha=1.5), "1.5"),
        (lambda: FocalLoss(reduction="avg"), "avg"),
        (lambda: BCELoss(pos_weight=0), "0"),
        (lambda: DiceFocalLoss(lambda_dice=-2), "-2"),
        (lambda: DiceFocalLoss(lambda_focal=-3), "-3"),
        (lambda: DiceFocalLoss(lambda_dice=0, lambda_focal=0), "both 0"),
        (lambda: DiceFocalLoss(gamma=-1), "-1"),
        (lambda: DiceFocalLoss(focal_alpha=-0.1), "-0.1"),
    ],
)
def test_bad_arguments_raise_with_value(build, bad):
    with pytest.raises(ValueError, match=bad):
        build()


@pytest.mark.parametrize("target_shape", [(2, 1, 8, 4), (2, 8), (1, 1, 8, 8), (2, 2, 8, 8)])
def test_bad_shapes_raise_with_shapes(target_shape):
    logits = torch.zeros(2, 1, 8, 8)
    for loss in (DiceLoss(), FocalLoss(), BCELoss(), DiceFocalLoss()):
        with pytest.raises(ValueError) as err:
            loss(logits, torch.zeros(target_shape))
        assert str(tuple(target_shape)) in str(err.value)
        assert "(2, 1, 8, 8)" in str(err.value)


# ---------------------------------------------------------------- mixed precision and gradients

LOSSES = [DiceLoss(), DiceLoss(per_image=True), FocalLoss(), FocalLoss(gamma=0.5, alpha=0.25)]
LOSSES += [BCELoss(pos_weight=2.0), DiceFocalLoss()]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: type(loss).__name__)
def test_bf16_logits_are_stable(loss):
    logits32 = torch.randn(2, 1, 16, 16) * 50
    logits32[0, 0, :4] = 100.0
    logits32[1, 0, :4] = -100.0
    target = (torch.rand(2, 1, 16, 16) > 0.5).float()
    logits16 = logits32.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(logits16, target)
    assert value.dtype == torch.float32
    assert torch.isfinite(value)
    # the same as the float32 loss of the bf16-rounded logits
    assert torch.allclose(value, loss(logits16.float(), target), rtol=1e-5)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: type(loss).__name__)
def test_gradient_finite_at_extreme_logits(loss):
    # right and wrong confident predictions, in float32 and bf16
    target = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.tensor([100.0, -100.0, -100.0, 100.0], dtype=dtype).view(1, 1, 2, 2)
        logits.requires_grad_(True)
        value = loss(logits, target)
        value.backward()
        assert torch.isfinite(value)
        assert torch.isfinite(logits.grad.float()).all()


# ---------------------------------------------------------------- configs


def test_loss_configs_instantiate():
    dice_focal = instantiate(OmegaConf.load(LOSS_CONF / "dice_focal.yaml"))
    assert isinstance(dice_focal, DiceFocalLoss)
    assert (dice_focal.lambda_dice, dice_focal.lambda_focal) == (1.0, 1.0)
    assert dice_focal.focal.gamma == 2.0 and dice_focal.focal.alpha is None
    assert dice_focal.dice.smooth == 1.0
    expected = {"dice": DiceLoss, "focal": FocalLoss, "bce": BCELoss}
    for name, cls in expected.items():
        assert type(instantiate(OmegaConf.load(LOSS_CONF / f"{name}.yaml"))) is cls
