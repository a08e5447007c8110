import pytest
from datafiles import write_folder

from brainseg.data.__main__ import main


def test_verify_passes_on_a_clean_folder(tmp_path, capsys):
    root = write_folder(tmp_path / "d", empty=(3,))
    assert main(["verify", "data=folder", f"data.root={root}"]) == 0
    assert "OK: 6 image/mask pairs" in capsys.readouterr().out


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
