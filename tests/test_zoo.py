"""Every configured network meets the contract (brainseg.models.base), offline; the weights of
the libraries' families load from local files; the registry and `brainseg-models list`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn
from torchvision.models._api import WeightsEnum

from brainseg.models import (
    SegmentationNetwork,
    build_network,
    check_data_fits,
    count_flops,
    list_networks,
    network_config,
    smp_models,
)
from brainseg.models.__main__ import main as models_cli
from brainseg.models.base import IMAGENET_STATS
from brainseg.models.monai_models import NnUNet2D, nnunet_plan
from brainseg.models.smp_models import SmpNetwork
from brainseg.models.torchvision_models import TorchvisionSegmentation

from .conftest import REPO_ROOT

NETWORKS = list_networks()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def offline(monkeypatch):
    """Every way the libraries fetch weights fails, as on a machine without internet."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(smp_models, "hf_hub_download", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    return calls


def test_the_zoo_has_at_least_eight_networks_of_three_libraries():
    zoo = [n for n in NETWORKS if n not in ("unet", "fpn")]
    assert len(zoo) >= 8
    assert {n.split("_")[0] for n in zoo} >= {"smp", "tv", "monai"}


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", NETWORKS)
def test_every_network_maps_images_to_one_logit_per_pixel(name, in_channels, offline):
    model, size = network_config(name, "smoke", [f"data.in_channels={in_channels}"])
    assert model.name == name  # the label its runs get is the name model= selects
    net = build_network(model)  # the smoke preset sets pretrained=false: nothing is fetched
    assert isinstance(net, SegmentationNetwork)
    assert net.in_channels == in_channels and net.out_channels == 1
    assert size % net.multiple == 0
    net.train()
    x = torch.randn(2, in_channels, size, size)
    out = net(x)
    assert out.shape == (2, 1, size, size) and out.dtype == torch.float32
    target = (torch.rand(2, 1, size, size) > 0.5).float()
    nn.functional.binary_cross_entropy_with_logits(out, target).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) >= 0.9 * len(grads)
    assert count_flops(net, size) > 0
    assert offline == []


@pytest.mark.parametrize("name", NETWORKS)
def test_rebuilding_a_checkpoint_fetches_no_weights_whatever_the_config_says(name, offline):
    model, _ = network_config(name, "smoke", ["pretrained=true"])
    model.weights_path = "/nonexistent/weights.pth"  # neither downloaded nor read
    net = build_network(model, load_pretrained=False)
    assert net.input_stats is None
    assert offline == []


@pytest.mark.parametrize("name", NETWORKS)
def test_a_config_with_a_pretrained_switch_builds_a_network_that_loads_weights(name, monkeypatch):
    model, _ = network_config(name, "smoke", ["pretrained=true"])
    loads = []
    monkeypatch.setattr(
        SegmentationNetwork, "load_pretrained", lambda self, path=None: loads.append(path)
    )
    cls = type(build_network(model, load_pretrained=False))
    monkeypatch.setattr(cls, "load_pretrained", lambda self, path=None: loads.append(path))
    build_network(model)
    if "pretrained" in model:  # the family has published weights: the switch must reach them
        assert cls.pretrained_weights is not None and loads == [None], name
    else:
        assert cls.pretrained_weights is None and loads == [], name


def test_the_study_fpn_gets_torchvisions_imagenet_resnet(monkeypatch):
    state = marked_state(torchvision.models.resnet18(weights=None))
    calls = []

    def cached(self, *args, **kwargs):
        calls.append(self)
        return state

    monkeypatch.setattr(WeightsEnum, "get_state_dict", cached)
    model, _ = network_config("fpn", "smoke", ["pretrained=true"])
    net = build_network(model)
    assert calls == [torchvision.models.ResNet18_Weights.DEFAULT]
    assert torch.equal(
        net.backbone.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"]
    )
    assert net.input_stats == IMAGENET_STATS


def test_pretrained_true_leaves_a_family_without_weights_as_it_is(offline):
    model, _ = network_config("monai_dynunet", "smoke", ["pretrained=true"])
    model.pretrained = True
    assert build_network(model).input_stats is None
    model.weights_path = "weights.pth"
    with pytest.raises(ValueError, match="no pretrained weights.*pretrained=false"):
        build_network(model)


def test_a_target_that_is_no_segmentation_network_is_refused():
    with pytest.raises(TypeError, match="Identity.*SegmentationNetwork"):
        build_network({"_target_": "torch.nn.Identity", "name": "identity"})


def marked_state(module: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    """`module`'s state dict with values no initialisation would produce."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: v if not v.is_floating_point() else torch.rand(v.shape, generator=g) + 5
        for k, v in module.state_dict().items()
    }


@pytest.fixture
def resnet18_smp_file(tmp_path):
    """A resnet18 encoder as smp's hub serves it: model.safetensors, RGB."""
    from safetensors.torch import save_file

    encoder = smp.encoders.get_encoder("resnet18", in_channels=3, weights=None)
    state = marked_state(encoder)
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    return path, state


def test_smp_weights_path_loads_every_encoder_tensor_and_fits_one_channel(resnet18_smp_file):
    path, state = resnet18_smp_file
    net = SmpNetwork("Unet", "resnet18", in_channels=1, weights_path=path)
    loaded = net.model.encoder.state_dict()
    assert torch.allclose(loaded["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    for key in ("layer4.1.conv2.weight", "bn1.running_mean", "layer2.0.downsample.1.bias"):
        assert torch.equal(loaded[key], state[key]), key
    assert net.input_stats == IMAGENET_STATS


def test_smp_loads_a_torchvision_classification_checkpoint(tmp_path):
    state = marked_state(torchvision.models.resnet18(weights=None))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "r.pth")
    net = SmpNetwork("DeepLabV3Plus", "resnet18", weights_path=tmp_path / "r.pth")
    assert torch.equal(
        net.model.encoder.state_dict()["layer3.1.bn2.weight"], state["layer3.1.bn2.weight"]
    )


def test_smp_pretrained_fetches_smps_imagenet_encoder(monkeypatch, resnet18_smp_file):
    path, state = resnet18_smp_file
    asked = []

    def hub(repo, filename, revision):
        asked.append((repo, filename))
        return str(path)

    monkeypatch.setattr(smp_models, "hf_hub_download", hub)
    net = SmpNetwork("Unet", "resnet18", pretrained=True)
    assert asked == [("smp-hub/resnet18.imagenet", "model.safetensors")]
    assert torch.equal(net.model.encoder.state_dict()["conv1.weight"], state["conv1.weight"])


def test_smp_offline_and_wrong_files_name_the_fix(offline, resnet18_smp_file, tmp_path):
    with pytest.raises(RuntimeError, match="pretrained=false.*model.weights_path="):
        SmpNetwork("Unet", "resnet18", pretrained=True)
    path, _ = resnet18_smp_file
    with pytest.raises(RuntimeError, match="model.safetensors does not fit.*unexpected keys"):
        SmpNetwork("Unet", "mit_b0", weights_path=path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        SmpNetwork("Unet", "resnet18", weights_path=tmp_path / "nope.pth")


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory):
    """A torchvision MobileNetV3-Large classification checkpoint."""
    state = marked_state(torchvision.models.mobilenet_v3_large(weights=None))
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v3_large.pth"
    torch.save(state, path)
    return path, state


def test_torchvision_weights_path_loads_the_backbone(mobilenet_file):
    path, state = mobilenet_file
    net = TorchvisionSegmentation("lraspp_mobilenet_v3_large", in_channels=1, weights_path=path)
    loaded = net.model.backbone.state_dict()
    first = "0.0.weight"
    assert torch.allclose(loaded[first], state[f"features.{first}"].sum(1, keepdim=True))
    assert torch.equal(loaded["16.1.running_var"], state["features.16.1.running_var"])
    assert net.input_stats == IMAGENET_STATS


def test_torchvision_pretrained_uses_the_builders_backbone_weights(monkeypatch, mobilenet_file):
    _, state = mobilenet_file
    calls = []

    def cached(self, *args, **kwargs):
        calls.append(self)
        return state

    monkeypatch.setattr(WeightsEnum, "get_state_dict", cached)
    net = TorchvisionSegmentation("deeplabv3_mobilenet_v3_large", pretrained=True)
    assert calls == [torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1]
    assert torch.equal(
        net.model.backbone.state_dict()["3.block.0.0.weight"], state["features.3.block.0.0.weight"]
    )


def test_torchvision_offline_names_the_fix(offline):
    with pytest.raises(RuntimeError, match="pretrained=false.*weights_path"):
        TorchvisionSegmentation("lraspp_mobilenet_v3_large", pretrained=True)


def test_data_normalised_otherwise_than_the_weights_expect_is_refused(resnet18_smp_file):
    path, _ = resnet18_smp_file
    net = SmpNetwork("Unet", "resnet18", weights_path=path)
    mean, std = IMAGENET_STATS
    check_data_fits(net, "smp_unet", 64, 3, mean, std)
    with pytest.raises(ValueError, match=r"data.mean=\[0.5\].*pretrained=false"):
        check_data_fits(net, "smp_unet", 64, 3, [0.5], [0.25])
    with pytest.raises(ValueError, match="data.image_size=72.*64 or 96"):
        check_data_fits(net, "smp_unet", 72, 3, mean, std)
    with pytest.raises(ValueError, match="data.in_channels=1"):
        check_data_fits(net, "smp_unet", 64, 1, mean, std)
    grey = SmpNetwork("Unet", "resnet18", in_channels=1, weights_path=path)
    check_data_fits(grey, "smp_unet", 64, 1, mean, std)  # one channel: the stats' means
    scratch = SmpNetwork("Unet", "resnet18")
    check_data_fits(scratch, "smp_unet", 64, 3, [0.5], [0.25])  # random weights take any


@pytest.mark.parametrize(
    "size,features,strides",
    [
        (256, [32, 64, 128, 256, 512, 512, 512], [1, 2, 2, 2, 2, 2, 2]),
        (128, [32, 64, 128, 256, 512, 512], [1, 2, 2, 2, 2, 2]),
        (96, [32, 64, 128, 256, 512], [1, 2, 2, 2, 2]),
    ],
)
def test_nnunet_plan_pools_down_to_four_pixels(size, features, strides):
    assert nnunet_plan(size) == (features, strides)
    net = NnUNet2D(image_size=size, base_features=4, max_features=16)
    assert net.multiple == 2 ** (len(strides) - 1)
    assert size // net.multiple >= 4


def test_a_preset_sizes_the_networks_it_names_and_leaves_the_others_at_their_defaults():
    smoke, _ = network_config("smp_segformer", "smoke")
    cpu, _ = network_config("smp_segformer", "cpu")
    assert smoke.encoder == "mit_b0"
    assert (
        "smp_segformer"
        not in OmegaConf.load(REPO_ROOT / "brainseg/conf/experiment/cpu.yaml").networks
    )
    assert cpu.encoder == "mit_b2"  # the model config's default


def test_a_model_config_in_another_config_dir_is_listed_and_built(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my_linknet.yaml").write_text(LINKNET)
    assert "my_linknet" in list_networks([tmp_path])
    model, size = network_config("my_linknet", "smoke", config_dirs=[tmp_path])
    net = build_network(model)
    assert net(torch.zeros(1, 3, size, size)).shape == (1, 1, size, size)


# A family brainseg wraps already: one config file, nothing else.
LINKNET = """\
_target_: brainseg.models.smp_models.SmpNetwork
name: my_linknet
arch: Linknet
encoder: ${oc.select:networks.my_linknet.encoder,resnet18}
in_channels: ${data.in_channels}
pretrained: ${pretrained}
weights_path: null
"""


def test_models_list_prints_every_network_with_its_cost(capsys):
    rows = models_cli(["list", "--preset", "smoke", "--no-latency"])
    out = capsys.readouterr().out
    assert [r["name"] for r in rows] == NETWORKS
    for row in rows:
        assert row["name"] in out
        assert row["params"] > 0 and row["flops"] > 0 and row["image_size"] == 64
    by_name = {r["name"]: r for r in rows}
    assert by_name["unet"]["class"] == "UNet" and by_name["unet"]["pretrained_weights"] is None
    assert by_name["smp_unet"]["pretrained_weights"].startswith("ImageNet")


def test_models_list_times_the_networks_it_is_given(tmp_path, capsys):
    rows = models_cli(
        [
            "list",
            "unet",
            "tv_lraspp",
            "--preset",
            "smoke",
            "--iters",
            "2",
            "--json",
            str(tmp_path / "z.json"),
        ]
    )
    assert [r["name"] for r in rows] == ["unet", "tv_lraspp"]
    assert all(r["cpu_ms"] > 0 for r in rows)
    assert (tmp_path / "z.json").is_file()
    with pytest.raises(SystemExit):
        models_cli(["list", "no_such_net"])
    assert "no_such_net" in capsys.readouterr().err


MODELS_DIR = REPO_ROOT / "brainseg" / "models"
# Nothing in models/ reaches up: not the Lightning module, not the entry points, no __main__.
FORBIDDEN = ("brainseg.module", "brainseg.train", "brainseg.tracking", "brainseg.report")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_models_import_nothing_above_them_and_no_main():
    for path in MODELS_DIR.glob("*.py"):
        for name in imported_modules(path):
            assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"
            assert not name.endswith("__main__"), f"{path.name} imports {name}"
    for path in (REPO_ROOT / "brainseg").rglob("*.py"):
        assert "brainseg.models.__main__" not in imported_modules(path), path


def test_the_registry_and_its_cli_load_no_lightning():
    code = (
        "import sys, brainseg.models, brainseg.models.__main__\n"
        "print([m for m in ('brainseg.module', 'brainseg.train', 'pytorch_lightning') "
        "if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    ).stdout
    assert out.strip() == "[]"
