from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from brainseg.inference import masks_at, predict_logits
from brainseg.metrics import logits_to_masks
from brainseg.predict import find_inputs, main, predict

from .smoke_sweep import untrained_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # tested (as its config says) at threshold 0.3, in 32-true (the smoke preset's)
    path = tmp_path_factory.mktemp("ckpt") / "unet.ckpt"
    return untrained_checkpoint(path, "unet", "metrics.threshold=0.3")


def write_png(path: Path, height: int, width: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).save(path)
    return path


def write_mat(path: Path, height: int, width: int, pid: str = "MRI-7", label: int = 2) -> Path:
    """A figshare-style MATLAB v7.3 slice: HDF5 with a 512-byte user block, column-major arrays."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "w", userblock_size=512) as f:
        cjdata = f.create_group("cjdata")
        cjdata["image"] = rng.integers(0, 900, (height, width)).astype(np.int16).T
        cjdata["tumorMask"] = np.zeros((width, height), dtype=np.uint8)
        cjdata["PID"] = np.array([[ord(c)] for c in pid], dtype=np.uint16)
        cjdata["label"] = np.array([[label]], dtype=np.float64)
    return path


def test_masks_and_overlays_keep_each_inputs_size(tmp_path, checkpoint):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_png(inputs / "big.png", 512, 512)
    write_png(inputs / "wide.png", 200, 300)
    write_mat(inputs / "scan.mat", 256, 320)
    (inputs / "notes.txt").write_text("not a slice")  # a folder's other files are not inputs
    result = predict(checkpoint, inputs, tmp_path / "out", batch_size=2)
    assert not result.failed and len(result.rows) == 3
    for stem, size in (("big", (512, 512)), ("wide", (300, 200)), ("scan", (320, 256))):
        mask = Image.open(tmp_path / "out" / f"{stem}_mask.png")
        over = Image.open(tmp_path / "out" / f"{stem}_overlay.png")
        assert mask.size == size and mask.mode == "L", stem
        assert over.size == size and over.mode == "RGB", stem
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert (tmp_path / "out" / "predictions.csv").read_text().count("\n") == 4


def test_an_unreadable_file_is_reported_and_the_others_still_processed(tmp_path, checkpoint):
    write_png(tmp_path / "a.png", 64, 64)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    write_png(tmp_path / "c.png", 80, 40)
    result = predict(checkpoint, str(tmp_path / "*.png"), tmp_path / "out", batch_size=8)
    assert [p.name for p, _ in result.failed] == ["broken.png"]
    assert "broken.png" in result.failed[0][1]
    assert (tmp_path / "out" / "a_mask.png").exists() and (tmp_path / "out" / "c_mask.png").exists()


def test_cli_exits_non_zero_naming_the_failed_file(tmp_path, checkpoint, monkeypatch, capsys):
    write_png(tmp_path / "ok.png", 64, 64)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")
    argv = ["predict", f"ckpt_path={checkpoint}", f"input={tmp_path}", f"output={tmp_path / 'o'}",
            "predict.tta=true"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "1 input(s) failed" in err and "bad.png" in err
    assert (tmp_path / "o" / "ok_mask.png").exists()
    assert not (tmp_path / "outputs").exists()  # no Hydra run folder for a prediction


def test_inputs_sharing_a_stem_keep_both_outputs(tmp_path, checkpoint):
    write_png(tmp_path / "s.png", 64, 64)
    write_mat(tmp_path / "s.mat", 64, 64)
    result = predict(checkpoint, tmp_path, tmp_path / "out")
    assert len(result.rows) == 2
    assert (tmp_path / "out" / "s_png_mask.png").exists()
    assert (tmp_path / "out" / "s_mat_mask.png").exists()


def test_find_inputs_takes_a_file_a_folder_or_a_glob(tmp_path):
    write_png(tmp_path / "x.png", 8, 8)
    write_png(tmp_path / "y.png", 8, 8)
    assert find_inputs(tmp_path / "x.png") == [tmp_path / "x.png"]
    assert find_inputs(tmp_path) == [tmp_path / "x.png", tmp_path / "y.png"]
    assert find_inputs(str(tmp_path / "y*")) == [tmp_path / "y.png"]
    with pytest.raises(FileNotFoundError, match="matches no slice"):
        find_inputs(str(tmp_path / "*.tif"))


def test_flip_tta_averages_the_flipped_prediction():
    ramp = torch.linspace(-3, 3, 8).expand(1, 1, 4, 8)

    def module(images):  # a "network" that is not flip-equivariant: always the ramp
        return ramp.expand(images.shape[0], -1, -1, -1)

    images = torch.zeros(2, 3, 4, 8)
    plain = torch.sigmoid(predict_logits(module, images, tta=False))
    tta = torch.sigmoid(predict_logits(module, images, tta=True))
    assert torch.allclose(plain, torch.sigmoid(ramp).expand(2, -1, -1, -1))
    expected = (torch.sigmoid(ramp) + torch.sigmoid(ramp).flip(-1)) / 2
    assert torch.allclose(tta, expected) and torch.allclose(tta, torch.full_like(tta, 0.5))


def test_logits_are_resized_before_thresholding_and_kept_at_the_same_size():
    logits = torch.tensor([[-5.0, 5.0], [-5.0, 5.0]])[None, None]
    mask = masks_at(logits, (4, 6), threshold=0.5)[0]
    assert mask.shape == (4, 6) and mask.dtype == torch.bool
    assert not mask[:, :3].any() and mask[:, 3:].all()
    # at the network's size: exactly the metrics' decision, also in bf16
    near = torch.tensor([[-1e-3, 1e-3], [0.405, 0.406]], dtype=torch.bfloat16)[None, None]
    for threshold in (0.5, 0.6):
        assert torch.equal(
            masks_at(near, (2, 2), threshold), logits_to_masks(near[:, 0], threshold)
        )


def test_outputs_mirror_the_input_tree_so_equal_names_never_collide(tmp_path, checkpoint):
    for patient in ("p1", "p2"):
        (tmp_path / "scans" / patient).mkdir(parents=True)
        write_png(tmp_path / "scans" / patient / "slice.png", 64, 64)
    write_png(tmp_path / "scans" / "top.png", 64, 64)
    out = tmp_path / "out"
    result = predict(checkpoint, str(tmp_path / "scans" / "**" / "*.png"), out)
    assert len(result.rows) == 3
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_mask.png"))
    assert written == ["p1/slice_mask.png", "p2/slice_mask.png", "top_mask.png"]
    assert sorted(r["mask"] for r in result.rows) == [str(out / w) for w in written]


def test_inputs_that_would_share_an_output_are_refused_naming_both(tmp_path, checkpoint):
    write_png(tmp_path / "a.png", 64, 64)
    write_mat(tmp_path / "a.mat", 64, 64)  # a -> a_png and a_mat ...
    write_png(tmp_path / "a_png.png", 64, 64)  # ... and this one is a_png too
    with pytest.raises(ValueError, match=r"a\.png and .*a_png\.png would both write"):
        predict(checkpoint, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec, output",
    [
        ("scans", "scans"),  # the input folder itself
        ("scans/x.png", "scans"),  # a file's own folder
        ("scans/*.png", "scans/."),  # a glob's folder, spelled otherwise
        ("scans/**/*.png", "scans/masks"),  # inside the folder a recursive glob searches
        ("scans/**", "scans/masks"),  # the same, every file below
        ("scans/**/*.png", "scans/sub"),  # into an input's own folder
    ],
)
def test_predicting_into_the_inputs_folder_is_refused(tmp_path, checkpoint, spec, output):
    (tmp_path / "scans" / "sub").mkdir(parents=True)
    write_png(tmp_path / "scans" / "x.png", 64, 64)
    write_png(tmp_path / "scans" / "sub" / "y.png", 64, 64)
    before = sorted(p.name for p in (tmp_path / "scans").rglob("*"))
    with pytest.raises(ValueError, match="give an output folder outside"):
        predict(checkpoint, str(tmp_path / spec), tmp_path / output)
    assert sorted(p.name for p in (tmp_path / "scans").rglob("*")) == before


def test_an_output_beside_or_below_a_flat_input_is_accepted(tmp_path, checkpoint):
    (tmp_path / "scans").mkdir()
    write_png(tmp_path / "scans" / "x.png", 64, 64)
    predict(checkpoint, tmp_path / "scans", tmp_path / "scans" / "masks")  # not searched
    predict(checkpoint, tmp_path / "scans", tmp_path / "masks")
    assert find_inputs(tmp_path / "scans") == [tmp_path / "scans" / "x.png"]


def test_the_threshold_and_precision_are_the_checkpoints_unless_given(tmp_path, checkpoint):
    write_png(tmp_path / "x.png", 64, 64)
    default = predict(checkpoint, tmp_path / "x.png", tmp_path / "a")
    assert default.rows[0]["threshold"] == 0.3 and default.rows[0]["precision"] == "32-true"
    given = predict(checkpoint, tmp_path / "x.png", tmp_path / "b", threshold=0.7,
                    precision="bf16-mixed")  # fmt: skip
    assert given.rows[0]["threshold"] == 0.7 and given.rows[0]["precision"] == "bf16-mixed"
    assert "the checkpoint was tested in 32-true" in given.settings
