from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

from brainseg.export import export, main
from brainseg.module import load_module

from .smoke_sweep import untrained_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt") / "unet.ckpt")


def test_torchscript_matches_pytorch_at_any_batch_size(tmp_path, checkpoint):
    path, diff = export(checkpoint, "torchscript", tmp_path / "unet.pt")
    assert diff < 1e-4
    scripted = torch.jit.load(str(path))
    net = load_module(checkpoint).net
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-4)


def test_onnx_matches_pytorch_with_a_dynamic_batch(tmp_path, checkpoint, caplog):
    ort = pytest.importorskip("onnxruntime")
    with caplog.at_level(logging.INFO):
        path, diff = export(checkpoint, "onnx", tmp_path / "unet.onnx")
    assert diff < 1e-4
    # The exporter's optimiser chatter ("Removed 191 unused nodes", ...) stays off the console.
    assert not [r for r in caplog.records if r.name.startswith(("onnxscript", "onnx_ir"))]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = load_module(checkpoint).net(x).numpy()
    (logits,) = session.run(None, {"image": x.numpy()})
    assert logits.shape == (4, 1, 64, 64)
    assert np.abs(logits - expected).max() < 1e-4


def test_a_difference_above_the_tolerance_fails_clearly(tmp_path, checkpoint):
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        export(checkpoint, "torchscript", tmp_path / "unet.pt", tolerance=-1.0)


def test_an_unknown_format_names_the_choices(checkpoint):
    with pytest.raises(ValueError, match="onnx, torchscript"):
        export(checkpoint, "tflite")


def test_cli_writes_next_to_the_checkpoint_and_prints_the_difference(
    checkpoint, monkeypatch, capsys
):
    monkeypatch.setattr(sys, "argv", ["export", f"ckpt_path={checkpoint}", "format=torchscript"])
    main()
    out = capsys.readouterr().out
    assert (checkpoint.parent / "unet.torchscript.pt").is_file()
    assert "max |torchscript - PyTorch|" in out


def test_the_check_runs_on_synthetic_brain_slices_prepared_as_predict_prepares_them(checkpoint):
    from brainseg.data.synthetic import SyntheticSource
    from brainseg.data.transforms import SlicePreprocessor
    from brainseg.export import check_slices

    config = load_module(checkpoint).hparams.config
    slices = check_slices(config, 64, 3, seed=1)
    prepare = SlicePreprocessor.from_config(config["data"])
    source = SyntheticSource(num_slices=3, num_patients=3, size=64, seed=1)
    expected = torch.stack([prepare(source.sample(i).image) for i in range(3)])
    assert slices.shape == (3, 3, 64, 64)
    assert torch.equal(slices, expected)
    # Not noise: neighbouring pixels agree, as on a real slice (for random input r ~ 0).
    a, b = slices[:, 0, :, 1:].flatten(), slices[:, 0, :, :-1].flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.8
