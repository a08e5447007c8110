import logging

import pytest
from datafiles import write_folder, write_metadata

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
