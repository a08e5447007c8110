"""Tests for brainseg.models: shapes, gradients, sizes, weights loading, input checks."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models._api import WeightsEnum

from brainseg.models import SemanticFPN, UNet, check_input_size
from brainseg.models.__main__ import main as list_models
from brainseg.models.base import count_flops


def tiny_unet(**kwargs) -> UNet:
    return UNet(**{"base_width": 4, **kwargs})


def tiny_fpn(**kwargs) -> SemanticFPN:
    defaults = {"backbone": "resnet18", "pretrained": False, "fpn_channels": 32}
    return SemanticFPN(**{**defaults, **kwargs})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("make", [tiny_unet, tiny_fpn], ids=["unet", "fpn"])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 128)])
def test_output_is_one_logit_per_pixel(make, in_channels, size):
    model = make(in_channels=in_channels).eval()
    classifier = model.head if isinstance(model, UNet) else model.head.classifier
    with torch.no_grad():
        classifier.bias.fill_(10.0)
        out = model(torch.randn(2, in_channels, *size))
    assert out.shape == (2, 1, *size)
    assert out.dtype == torch.float32
    # Logits, not probabilities: a sigmoid inside would keep them below 1.
    assert out.min() > 5


@pytest.mark.parametrize("fuse", ["conv1x1", "conv3x3x2"])
def test_fpn_pyramid_is_four_levels_at_strides_4_to_32(fuse):
    model = tiny_fpn(fpn_channels=256, fuse=fuse).eval()
    with torch.no_grad():
        pyramid = model.pyramid(torch.randn(1, 3, 64, 128))
    assert [tuple(p.shape) for p in pyramid] == [
        (1, 256, 64 // s, 128 // s) for s in (4, 8, 16, 32)
    ]


def test_fpn_head_variants_differ_as_described():
    one = tiny_fpn(fuse="conv1x1").head.fuse
    two = tiny_fpn(fuse="conv3x3x2").head.fuse
    convs = [[m for m in f if isinstance(m, nn.Conv2d)] for f in (one, two)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs[0]] == [(128, 32, (1, 1))]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs[1]] == [
        (128, 32, (3, 3)),
        (32, 32, (3, 3)),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in two) == 2
    with pytest.raises(ValueError, match="conv5x5"):
        tiny_fpn(fuse="conv5x5")


@pytest.mark.parametrize(
    "model", [tiny_unet(), tiny_fpn(), tiny_fpn(fuse="conv3x3x2")], ids=["unet", "fpn", "fpn3x3"]
)
def test_gradients_reach_every_parameter(model):
    model.train()
    x = torch.randn(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    nn.functional.binary_cross_entropy_with_logits(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("make", [tiny_unet, tiny_fpn], ids=["unet", "fpn"])
def test_eval_mode_is_deterministic_and_train_mode_uses_dropout(make):
    model = make(dropout=0.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def unet_parameter_count(in_channels: int, w: int, depth: int) -> int:
    def double_conv(c_in: int, c_out: int) -> int:
        # two 3x3 convs without bias, each followed by BN (weight + bias)
        return 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out

    widths = [w * 2**i for i in range(depth + 1)]
    encoder = double_conv(in_channels, w) + sum(
        double_conv(widths[i - 1], widths[i]) for i in range(1, depth)
    )
    bridge = double_conv(widths[-2], widths[-1])
    decoder = sum(4 * c * (c // 2) + c // 2 + double_conv(c, c // 2) for c in reversed(widths[1:]))
    return encoder + bridge + decoder + w + 1


@pytest.mark.parametrize("in_channels,w,depth", [(3, 64, 4), (1, 16, 4), (3, 8, 3)])
def test_unet_parameter_count_matches_architecture(in_channels, w, depth):
    model = UNet(in_channels=in_channels, base_width=w, depth=depth)
    n = sum(p.numel() for p in model.parameters())
    assert n == unet_parameter_count(in_channels, w, depth)
    if (in_channels, w, depth) == (3, 64, 4):
        assert 30.5e6 < n < 31.5e6  # the study's U-Net, ~31 M


def test_unet_widths_and_dropout_placement():
    model = UNet(base_width=64)
    assert [b[0].out_channels for b in model.encoder] == [64, 128, 256, 512]
    assert model.bridge[0].out_channels == 1024
    assert [u.up.out_channels for u in model.decoder] == [512, 256, 128, 64]
    n_dropout = sum(isinstance(m, nn.Dropout2d) for m in model.modules())
    assert n_dropout == 5  # bridge + 4 decoder blocks
    assert not any(isinstance(m, nn.Dropout2d) for m in UNet(dropout_at=()).modules())
    assert all(isinstance(b[-1], nn.Dropout2d) for b in UNet(dropout_at=["encoder"]).encoder)
    with pytest.raises(ValueError, match="head"):
        UNet(dropout_at=["head"])


@pytest.mark.parametrize("make", [tiny_unet, tiny_fpn], ids=["unet", "fpn"])
@pytest.mark.parametrize("h,w,fix", [(250, 250, "256x256"), (64, 80, "64x96"), (33, 64, "64x64")])
def test_bad_input_size_names_size_and_fix(make, h, w, fix):
    model = make().eval()
    with pytest.raises(ValueError, match=f"{h}x{w} is not divisible by 32.*{fix}"):
        model(torch.randn(1, 3, h, w))


def test_check_input_size_rejects_other_shapes():
    check_input_size(torch.zeros(1, 3, 64, 32))
    with pytest.raises(ValueError, match="4-D"):
        check_input_size(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="in_channels=3"):
        tiny_unet()(torch.zeros(1, 1, 64, 64))


def test_check_input_size_compiles_without_graph_break():
    def f(x):
        check_input_size(x)
        return x * 2

    explanation = torch._dynamo.explain(f)(torch.zeros(1, 3, 64, 64))
    assert explanation.graph_break_count == 0


@pytest.fixture
def resnet18_file(tmp_path):
    """A resnet18 state dict with values no initialisation would produce."""
    g = torch.Generator().manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state = {
        k: v if k.endswith("num_batches_tracked") else torch.rand(v.shape, generator=g) + 5
        for k, v in state.items()
    }
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return path, state


def backbone_state(model: SemanticFPN) -> dict[str, torch.Tensor]:
    return model.backbone.state_dict()


def test_weights_path_loads_every_backbone_tensor(resnet18_file):
    path, state = resnet18_file
    random = backbone_state(tiny_fpn())
    loaded = backbone_state(tiny_fpn(weights_path=str(path)))
    for k, v in loaded.items():
        assert torch.equal(v, state[k]), k
        if not k.endswith("num_batches_tracked"):
            assert not torch.equal(v, random[k]), k
    assert len(loaded) == len([k for k in state if not k.startswith("fc.")])


def test_weights_path_with_prefix_and_one_channel(resnet18_file, tmp_path):
    path, state = resnet18_file
    wrapped = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    loaded = backbone_state(tiny_fpn(in_channels=1, weights_path=wrapped))
    assert torch.allclose(loaded["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(loaded["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_weights_path_errors_name_the_problem(resnet18_file, tmp_path):
    path, state = resnet18_file
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        tiny_fpn(weights_path=tmp_path / "nope.pth")
    with pytest.raises(RuntimeError, match="unexpected keys.*layer1.2"):
        tiny_fpn(backbone="resnet18", weights_path=_save(tmp_path, "r34.pth", "resnet34"))
    broken = dict(state)
    del broken["layer2.0.bn1.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="missing keys.*layer2.0.bn1.weight"):
        tiny_fpn(weights_path=tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="shape mismatches.*layer1.0.conv1.weight"):
        tiny_fpn(backbone="resnet50", weights_path=path)


def _save(tmp_path, name, arch):
    path = tmp_path / name
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return path


def test_pretrained_without_internet_names_both_fixes(monkeypatch):
    def offline(self, *args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as err:
        SemanticFPN(backbone="resnet18", pretrained=True)
    message = str(err.value)
    assert "model.pretrained=false" in message
    assert "model.weights_path=" in message
    assert "name resolution" in message


def test_pretrained_uses_torchvision_weights_api(monkeypatch, resnet18_file):
    _, state = resnet18_file
    calls = []

    def cached(self, *args, **kwargs):
        calls.append(self)
        return state

    monkeypatch.setattr(WeightsEnum, "get_state_dict", cached)
    loaded = backbone_state(SemanticFPN(backbone="resnet18", pretrained=True, fpn_channels=32))
    assert calls == [torchvision.models.ResNet18_Weights.DEFAULT]
    assert torch.equal(loaded["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])


def test_list_models_prints_both(capsys):
    rows = list_models(["list", "unet", "fpn", "--no-latency"])  # the study preset's sizes
    out = capsys.readouterr().out
    assert "unet" in out and "fpn" in out
    by_name = {r["name"]: r for r in rows}
    assert by_name["unet"]["class"] == "UNet" and by_name["fpn"]["class"] == "SemanticFPN"
    assert by_name["unet"]["params"] == unet_parameter_count(3, 64, 4)
    assert by_name["unet"]["flops"] == count_flops(UNet(base_width=64), 256)
    assert all(r["flops"] > 0 and r["image_size"] == 256 for r in rows)


def test_count_flops_counts_a_convolution_as_two_flops_per_multiply_add():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, 16, in_channels=3) == 2 * (3 * 9) * 8 * 16 * 16
