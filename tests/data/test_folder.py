import numpy as np
import pytest
from datafiles import write_folder, write_metadata
from PIL import Image

from brainseg.data.folder import FolderSource


def test_pairs_metadata_and_natural_order(tmp_path):
    source = FolderSource(write_folder(tmp_path / "d", n=11))
    samples = list(source)
    assert [s.meta["id"] for s in samples] == [str(i) for i in range(1, 12)]
    assert samples[9].meta == {"id": "10", "pid": "P4", "label": 2}
    assert samples[0].image.dtype == np.uint8 and samples[0].image.shape == (16, 16)
    assert set(np.unique(samples[0].mask)) == {0, 255}
    assert source.folds()["10"] == 5


def test_without_metadata_pids_are_unknown(tmp_path):
    source = FolderSource(write_folder(tmp_path / "d", metadata=False))
    assert {s.meta["pid"] for s in source} == {""}
    assert source.folds() is None


def test_empty_masks_are_allowed(tmp_path):
    source = FolderSource(write_folder(tmp_path / "d", empty=(2, 4)))
    masks = {s.meta["id"]: s.mask for s in source}
    assert not masks["2"].any() and masks["3"].any()
    assert source.verify() == []


def test_mixed_formats_pair_by_stem(tmp_path):
    root = write_folder(tmp_path / "d", n=2, metadata=False)
    Image.open(root / "images" / "1.png").save(root / "images" / "x.tif")
    Image.open(root / "masks" / "1.png").save(root / "masks" / "x.png")
    Image.open(root / "images" / "2.png").convert("RGB").save(root / "images" / "y.jpg")
    Image.open(root / "masks" / "2.png").save(root / "masks" / "y.bmp")
    samples = {s.meta["id"]: s for s in FolderSource(root)}
    assert set(samples) == {"1", "2", "x", "y"}
    assert samples["y"].image.ndim == 2  # colour JPEG read as grey
    assert np.array_equal(samples["y"].mask, np.asarray(Image.open(root / "masks" / "2.png")))


def test_cache_key_changes_when_a_file_changes(tmp_path):
    root = write_folder(tmp_path / "d")
    key = FolderSource(root).cache_key()
    assert FolderSource(root).cache_key() == key
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / "3.png")
    assert FolderSource(root).cache_key() != key


def test_image_without_mask_and_mask_without_image_are_named(tmp_path):
    root = write_folder(tmp_path / "d")
    (root / "masks" / "2.png").unlink()
    (root / "images" / "5.png").unlink()
    with pytest.raises(ValueError, match=r"2 unpaired") as info:
        len(FolderSource(root))
    message = str(info.value)
    assert "images/2.png: no mask" in message and "masks/5.png: no image" in message
    assert "verify" in message


def test_size_mismatch_names_both_files(tmp_path):
    root = write_folder(tmp_path / "d")
    Image.fromarray(np.zeros((20, 16), np.uint8)).save(root / "masks" / "3.png")
    with pytest.raises(
        ValueError, match=r"images/3\.png / .*masks/3\.png: image is 16x16 but mask is 20x16"
    ):
        list(FolderSource(root))


def test_non_binary_mask_is_named_with_its_values(tmp_path):
    root = write_folder(tmp_path / "d")
    Image.fromarray(np.array([[0, 128], [255, 0]] * 8, np.uint8).repeat(8, 1)).save(
        root / "masks" / "4.png"
    )
    with pytest.raises(
        ValueError, match=r"masks/4\.png: mask is not binary \(values 0, 128, 255\).*nearest"
    ):
        list(FolderSource(root))


def test_empty_folder_says_where_to_put_the_files(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match=r"no images .* in .*images: put the slices there"):
        len(FolderSource(tmp_path))


def test_missing_root_and_missing_masks_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist: set data\.root"):
        len(FolderSource(tmp_path / "nowhere"))
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"masks does not exist"):
        len(FolderSource(tmp_path))


def test_unreadable_image_is_named(tmp_path):
    root = write_folder(tmp_path / "d")
    (root / "images" / "6.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"cannot read .*images/6\.png .*re-export it"):
        list(FolderSource(root))


def test_bad_metadata_columns_are_named(tmp_path):
    root = write_folder(tmp_path / "d")
    (root / "metadata.csv").write_text("name,patient\n1,a\n")
    with pytest.raises(
        ValueError, match=r"metadata\.csv has columns \['name', 'patient'\]; it needs sample_id,pid"
    ):
        list(FolderSource(root))


def test_verify_lists_every_problem_without_stopping(tmp_path):
    root = write_folder(tmp_path / "d", n=8)
    (root / "images" / "2.png").write_bytes(b"garbage")
    (root / "masks" / "5.png").unlink()
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(root / "masks" / "7.png")
    problems = FolderSource(root).verify()
    assert len(problems) == 3
    joined = "\n".join(problems)
    assert (
        "images/2.png" in joined and "images/5.png: no mask" in joined and "masks/7.png" in joined
    )


def test_duplicated_sample_id_is_refused_with_its_lines(tmp_path):
    # The last row used to win silently, with its pid and label.
    root = write_folder(tmp_path / "d")
    with open(root / "metadata.csv", "a") as f:
        f.write("3,P9,1,1\n4,P9,1,1\n")
    with pytest.raises(ValueError) as info:
        list(FolderSource(root))
    message = str(info.value)
    assert str(root / "metadata.csv") in message
    assert "2 sample_id(s) on more than one row: 3 (lines 4, 8), 4 (lines 5, 9)" in message
    assert "one row per image" in message


def test_metadata_rows_that_match_no_image_are_named(tmp_path):
    root = write_folder(tmp_path / "d", n=8)
    write_metadata(root, [(f"{i}.png", f"P{i}") for i in range(1, 9)])
    with pytest.raises(ValueError) as info:
        list(FolderSource(root))
    message = str(info.value)
    assert str(root / "metadata.csv") in message
    assert "8 row(s) name no image in" in message
    assert "line 2 (1.png), line 3 (2.png)" in message and "and 3 more" in message
    assert "file stem" in message


def test_partial_metadata_leaves_the_other_pids_blank(tmp_path):
    # Whether that is acceptable depends on data.split (see test_splits.py).
    root = write_folder(tmp_path / "d")
    write_metadata(root, [("1", "A"), ("2", "A")])
    source = FolderSource(root)
    assert [s.meta["pid"] for s in source] == ["A", "A", "", "", "", ""]
    assert source.patient_ids() == {"1": "A", "2": "A", "3": "", "4": "", "5": "", "6": ""}
    assert source.verify() == []


def test_verify_reports_duplicated_and_unmatched_metadata_rows(tmp_path):
    root = write_folder(tmp_path / "d")
    with open(root / "metadata.csv", "a") as f:
        f.write("2,P7,1,1\nseven,P7,1,1\n")
    problems = FolderSource(root).verify()
    joined = "\n".join(problems)
    assert len(problems) == 2
    assert "2 (lines 3, 8)" in joined and "line 9 (seven)" in joined


def truth_of(root, stem: str) -> np.ndarray:
    """The tumor pixels of masks/<stem>.png as `write_folder` wrote it."""
    return np.asarray(Image.open(root / "masks" / f"{stem}.png")) > 0


def replace_mask(root, stem: str, image: Image.Image, suffix: str = ".png", **options) -> None:
    """Swap masks/<stem>.png for `image` saved as <stem><suffix>."""
    (root / "masks" / f"{stem}.png").unlink()
    image.save(root / "masks" / f"{stem}{suffix}", **options)


def tumor_of(root, stem: str) -> np.ndarray:
    return {s.meta["id"]: s.mask for s in FolderSource(root)}[stem] > 0


@pytest.mark.parametrize("encoding", ["alpha", "palette", "16-bit", "0/1"])
def test_mask_encodings_decode_to_the_same_tumor(tmp_path, encoding):
    # Before, an alpha mask read as empty, and palette and 16-bit masks were refused.
    root = write_folder(tmp_path / "d")
    truth = truth_of(root, "3")
    if encoding == "alpha":
        rgba = np.zeros((*truth.shape, 4), np.uint8)
        rgba[..., 3] = truth * 255
        image = Image.fromarray(rgba, "RGBA")
    elif encoding == "palette":
        image = Image.fromarray(truth.astype(np.uint8)).convert("P")
        image.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254)
    elif encoding == "16-bit":
        image = Image.fromarray(truth.astype(np.uint16) * 65535)
    else:
        image = Image.fromarray(truth.astype(np.uint8))
    replace_mask(root, "3", image)
    assert truth.any()
    np.testing.assert_array_equal(tumor_of(root, "3"), truth)
    assert FolderSource(root).verify() == []


def test_jpeg_mask_is_refused_with_the_fix(tmp_path):
    # A 0/1 mask saved as JPEG used to be thresholded at 128: its whole tumor erased.
    root = write_folder(tmp_path / "d")
    zero_one = Image.fromarray(truth_of(root, "3").astype(np.uint8))
    replace_mask(root, "3", zero_one, ".jpg", quality=95)
    with pytest.raises(ValueError, match=r"masks/3\.jpg: JPEG is lossy.*save masks as PNG or TIFF"):
        list(FolderSource(root))
    (problem,) = FolderSource(root).verify()
    assert "masks/3.jpg: JPEG is lossy" in problem


def test_multi_page_tiff_mask_is_refused(tmp_path):
    # Page 0 used to be read and the others dropped without a word.
    root = write_folder(tmp_path / "d")
    first = Image.open(root / "masks" / "2.png")
    second = first.transpose(Image.FLIP_TOP_BOTTOM)
    replace_mask(root, "2", first, ".tif", save_all=True, append_images=[second])
    with pytest.raises(ValueError, match=r"masks/2\.tif holds 2 pages"):
        list(FolderSource(root))


def test_bmp_pair_is_read_and_an_unsupported_pair_is_named_not_skipped(tmp_path):
    # Both used to be skipped silently: 5 pairs for 6 slices.
    root = write_folder(tmp_path / "d")
    for sub in ("images", "masks"):
        Image.open(root / sub / "6.png").save(root / sub / "6.bmp")
        (root / sub / "6.png").unlink()
    assert len(FolderSource(root)) == 6 and FolderSource(root).verify() == []
    for sub in ("images", "masks"):
        Image.open(root / sub / "6.bmp").save(root / sub / "6.gif")
        (root / sub / "6.bmp").unlink()
    with pytest.raises(ValueError, match=r"2 file\(s\) that cannot be slices") as info:
        len(FolderSource(root))
    message = str(info.value)
    assert "images/6.gif: no reader for .gif" in message and "masks/6.gif" in message
    problems = FolderSource(root).verify()
    assert len(problems) == 2 and all("no reader for .gif" in p for p in problems)


def test_stray_files_and_subfolders_are_named(tmp_path):
    root = write_folder(tmp_path / "d")
    (root / "images" / "notes.txt").write_text("scanner settings")
    (root / "masks" / "old").mkdir()
    (root / "images" / ".DS_Store").write_bytes(b"")  # hidden files are no slices
    problems = FolderSource(root).verify()
    joined = "\n".join(problems)
    assert "images/notes.txt: no reader for .txt" in joined
    assert "masks/old: a subfolder" in joined
    assert len(problems) == 3  # the stray also has no mask
    with pytest.raises(ValueError, match=r"notes\.txt"):
        list(FolderSource(root))


def test_metadata_with_a_byte_order_mark_is_read(tmp_path):
    # Excel's "CSV UTF-8" starts with a BOM, which used to hide the sample_id column.
    root = write_folder(tmp_path / "d")
    text = (root / "metadata.csv").read_text()
    (root / "metadata.csv").write_text(text, encoding="utf-8-sig")
    assert (root / "metadata.csv").read_bytes()[:3] == b"\xef\xbb\xbf"
    source = FolderSource(root)
    assert source.patient_ids()["4"] == "P1" and source.folds()["4"] == 2


@pytest.mark.parametrize("fold", ["9", "0", "-1"])
def test_fold_outside_1_to_5_is_named_with_file_row_and_value(tmp_path, fold):
    root = write_folder(tmp_path / "d")
    path = root / "metadata.csv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + f",{fold}"  # sample 4
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as info:
        FolderSource(root).folds()
    message = str(info.value)
    assert f"{path}, line 5 (sample_id 4): fold {fold} is not one of" in message
    assert "1..5" in message
    assert any(f"fold {fold}" in p for p in FolderSource(root).verify())


def test_empty_fold_means_unknown(tmp_path):
    root = write_folder(tmp_path / "d")
    path = root / "metadata.csv"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ","
    path.write_text("\n".join(lines) + "\n")
    source = FolderSource(root)
    assert source.metadata()["4"]["fold"] == 0 and source.folds() is None
