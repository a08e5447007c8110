"""Which batch-1 path the test stage would time, per network: every path's latency and the
share of mask pixels that differ from eager's, as `SegmentationModule.measure_inference` sees
them (eager fp32 as the reference, no Trainer). Needs no data set: seeded random images.

python benchmarks/latency_paths.py --device cuda --models unet fpn --out latency_paths.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from brainseg.atomic import write_json  # noqa: E402
from brainseg.config import compose  # noqa: E402
from brainseg.module import build_module  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--preset", default="study")
    p.add_argument("--models", nargs="+", default=["unet", "fpn"])
    p.add_argument("--channels-last", choices=("true", "false", "auto"), default="auto")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    results: dict[str, Any] = {"device": args.device, "models": []}
    for model in args.models:
        cfg = compose(
            [f"experiment={args.preset}", f"model={model}", "paths.output_dir=unused"]
            + ["pretrained=false", f"runtime.channels_last={args.channels_last}"]
            + [f"trainer.accelerator={'gpu' if args.device == 'cuda' else 'cpu'}"]
        )
        torch.manual_seed(0)
        module = build_module(cfg, load_pretrained=False).to(device)
        module.setup("test")  # the layout, as the Trainer sets it up
        module.timing = {"warmup": 10, "iters": args.iters}
        size = int(cfg.data.image_size)
        images = torch.randn(args.batch, int(cfg.data.in_channels), size, size, device=device)
        try:
            record = module.measure_inference(images)
        except Exception as error:  # the other network is still measured
            record = {"error": f"{type(error).__name__}: {error}"[:300]}
        row = {"model": model, "channels_last": module.channels_last, **record}
        row |= {"path": getattr(module, "inference_path", None)}
        row |= {"paths": getattr(module, "inference_paths", None)}
        print(row, flush=True)
        results["models"].append(row)
        write_json(args.out, results)  # after each network: a cut-off run keeps what it has
    return results


if __name__ == "__main__":
    main()
