import logging

import numpy as np
import pytest
from datafiles import write_folder, write_metadata
from PIL import Image

from brainseg.data.__main__ import main


def test_verify_passes_on_a_clean_folder(tmp_path, capsys):
    root = write_folder(tmp_path / "d", empty=(3,))
    assert main(["verify", "data=folder", f"data.root={root}"]) == 0
    out = capsys.readouterr().out
    assert "OK: 6 image/mask pairs" in out
    assert "split: data.split=auto splits by patient (3 patients)" in out


def test_verify_names_a_corrupt_png_and_a_missing_mask(tmp_path, capsys):
    root = write_folder(tmp_path / "d", n=8)
    png = (root / "images" / "4.png").read_bytes()
    (root / "images" / "4.png").write_bytes(png[: len(png) // 2])  # truncated PNG
    (root / "masks" / "6.png").unlink()
    assert main(["verify", "data=folder", f"data.root={root}"]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 2
    assert any("images/4.png" in p and "cannot read" in p for p in problems)
    assert any("images/6.png: no mask" in p for p in problems)


def verify_problems(root, capsys, *overrides) -> list[str]:
    """The PROBLEM lines of a verify that must fail."""
    assert main(["verify", "data=folder", f"data.root={root}", *overrides]) == 1
    out = capsys.readouterr().out
    assert not any(line.startswith("OK") for line in out.splitlines())
    return [line for line in out.splitlines() if line.startswith("PROBLEM")]


def test_verify_fails_on_a_blank_pid_and_says_auto_cannot_split(tmp_path, capsys):
    root = write_folder(tmp_path / "d")
    write_metadata(root, [(str(i), "" if i == 5 else f"P{i // 2}") for i in range(1, 7)])
    (problem,) = verify_problems(root, capsys)
    assert "split=auto" in problem and "1 of 6 slices have no patient id (5)" in problem
    assert str(root / "metadata.csv") in problem


def test_verify_fails_on_ids_that_match_no_file(tmp_path, capsys):
    root = write_folder(tmp_path / "d")
    write_metadata(root, [(f"img_{i}", f"P{i}") for i in range(1, 7)])
    (problem,) = verify_problems(root, capsys)
    assert "6 row(s) name no image" in problem and "line 2 (img_1)" in problem


def test_verify_fails_on_partial_metadata_unless_split_is_image(tmp_path, capsys):
    root = write_folder(tmp_path / "d")
    write_metadata(root, [("1", "A"), ("2", "A"), ("3", "B")])
    (problem,) = verify_problems(root, capsys)
    assert "3 of 6 slices have no patient id (4, 5, 6)" in problem
    assert main(["verify", "data=folder", f"data.root={root}", "data.split=image"]) == 0
    assert "split: data.split=image splits by image" in capsys.readouterr().out


def test_verify_fails_on_a_duplicated_sample_id(tmp_path, capsys):
    root = write_folder(tmp_path / "d")
    with open(root / "metadata.csv", "a") as f:
        f.write("6,P9,1,1\n")
    (problem,) = verify_problems(root, capsys)
    assert "6 (lines 7, 8)" in problem


def test_verify_without_pids_says_the_split_is_per_slice(tmp_path, capsys, caplog):
    root = write_folder(tmp_path / "d", metadata=False)
    with caplog.at_level(logging.WARNING):
        assert main(["verify", "data=folder", f"data.root={root}"]) == 0
    out = capsys.readouterr().out
    assert "split: data.split=auto splits by image" in out and "no slice has a patient id" in out
    assert "per slice" in caplog.text


def test_info_prints_counts_and_split(tmp_path, capsys):
    root = write_folder(tmp_path / "d", n=20, empty=(5,))
    args = [
        "info",
        "data=folder",
        f"data.root={root}",
        f"paths.data_dir={tmp_path}",
        "data.image_size=16",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "slices:    20 at 16x16" in out and "patients:  10" in out
    assert "empty masks 1" in out and "split (patient, split_seed 42)" in out
    assert "train" in out and "test" in out


def test_prepare_on_synthetic_writes_the_cache(tmp_path, capsys):
    args = [
        "prepare",
        "data=synthetic",
        f"paths.data_dir={tmp_path}",
        "data.source.num_slices=6",
        "data.source.num_patients=3",
        "data.source.size=32",
        "data.image_size=16",
    ]
    assert main(args) == 0
    assert "cache ready" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1


def test_folder_without_root_says_how_to_set_it():
    with pytest.raises(SystemExit, match=r"data\.root is not set: pass data\.root="):
        main(["verify", "data=folder"])


def test_errors_exit_non_zero_with_the_message(tmp_path, capsys):
    assert (
        main(
            [
                "info",
                "data=folder",
                f"data.root={tmp_path / 'nowhere'}",
                f"paths.data_dir={tmp_path}",
            ]
        )
        == 2
    )
    assert "nowhere does not exist" in capsys.readouterr().err


def test_verify_counts_a_bmp_pair(tmp_path, capsys):
    # A .bmp pair used to be skipped: "OK: 5 image/mask pairs" for 6 slices.
    root = write_folder(tmp_path / "d")
    for sub in ("images", "masks"):
        Image.open(root / sub / "6.png").save(root / sub / "6.bmp")
        (root / sub / "6.png").unlink()
    assert main(["verify", "data=folder", f"data.root={root}"]) == 0
    assert "OK: 6 image/mask pairs" in capsys.readouterr().out


def test_verify_names_a_pair_no_reader_reads(tmp_path, capsys):
    root = write_folder(tmp_path / "d")
    for sub in ("images", "masks"):
        Image.open(root / sub / "6.png").save(root / sub / "6.webp", lossless=True)
        (root / sub / "6.png").unlink()
    problems = verify_problems(root, capsys)
    assert len(problems) == 2
    assert all("6.webp: no reader for .webp" in p for p in problems)


def test_verify_warns_about_an_inverted_mask(tmp_path, capsys):
    root = write_folder(tmp_path / "d")
    mask = np.asarray(Image.open(root / "masks" / "2.png"))
    Image.fromarray(255 - mask).save(root / "masks" / "2.png")
    assert main(["verify", "data=folder", f"data.root={root}"]) == 0
    out = capsys.readouterr().out
    (warning,) = [line for line in out.splitlines() if line.startswith("WARNING")]
    covered = np.mean(mask == 0)
    assert "1 of 6 mask(s) cover more than 50%" in warning
    assert f"masks/2.png ({covered:.0%})" in warning and "invert them" in warning
    assert "1 warning(s) above" in out


def test_verify_warns_about_images_without_signal(tmp_path, capsys):
    root = write_folder(tmp_path / "d")
    for i in range(1, 7):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / f"{i}.png")
    assert main(["verify", "data=folder", f"data.root={root}"]) == 0
    out = capsys.readouterr().out
    assert "WARNING all 6 images are constant (e.g. all zero): the images hold no signal" in out
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(root / "images" / "1.png")
    assert main(["verify", "data=folder", f"data.root={root}"]) == 0
    out = capsys.readouterr().out
    assert "WARNING 5 of 6 image(s) are constant, without signal: " in out
    assert "images/2.png / " in out and "images/1.png / " not in out


def test_verify_of_a_clean_folder_warns_about_nothing(tmp_path, capsys):
    root = write_folder(tmp_path / "d", empty=(1, 2))
    assert main(["verify", "data=folder", f"data.root={root}"]) == 0
    assert "WARNING" not in capsys.readouterr().out
