"""List the configured models with their size: ``python -m brainseg.models``.

For every ``conf/model/*.yaml`` prints the parameter count and the GFLOPs of one forward pass
of a 256x256 image. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts
a multiply-add as 2 FLOPs (so GFLOPs = 2 x GMACs). Models are built with ``pretrained=false``
(sizes do not depend on the weights) and ``data.in_channels=3``.
"""

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from brainseg.config import CONF_DIR, compose
from brainseg.module import build_network


def build(config_path: Path, in_channels: int = 3) -> tuple[str, nn.Module]:
    """Instantiate the model of one ``conf/model`` file, at the study preset's size, without
    downloading weights."""
    cfg = compose(
        [f"model={config_path.stem}", "pretrained=false", f"data.in_channels={in_channels}"]
    )
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return model.get("name", config_path.stem), build_network(model, load_pretrained=False)


def count_flops(model: nn.Module, in_channels: int = 3, size: int = 256) -> int:
    """FLOPs of one forward pass at batch 1 (multiply-add = 2 FLOPs)."""
    x = torch.zeros(1, in_channels, size, size)
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> list[dict]:
    """Print one line per configured model; return the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="square input size for GFLOPs")
    parser.add_argument("--in-channels", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        name, model = build(path, args.in_channels)
        rows.append(
            {
                "name": name,
                "class": type(model).__name__,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "gflops": count_flops(model, args.in_channels, args.size) / 1e9,
            }
        )
    print(f"{'name':<10} {'class':<12} {'params (M)':>10} {f'GFLOPs @{args.size}²':>12}")
    for r in rows:
        print(f"{r['name']:<10} {r['class']:<12} {r['params_m']:>10.2f} {r['gflops']:>12.1f}")
    print("GFLOPs: FlopCounterMode FLOPs / 1e9, one image, a multiply-add counts as 2 FLOPs")
    return rows


if __name__ == "__main__":
    main()
