"""The reader registry: one reader per suffix, masks decoded by what the file means."""

import h5py
import numpy as np
import pytest
from datafiles import slice_arrays, write_folder, write_mat
from PIL import Image

from brainseg.data import readers
from brainseg.data.folder import FolderSource
from brainseg.data.readers import FORMATS, Format, read_image, read_mask, read_mat

TRUTH = np.zeros((12, 16), dtype=bool)
TRUTH[3:8, 4:11] = True


def saved(tmp_path, image: Image.Image, name: str, **options) -> str:
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_grey_masks_keep_their_values_0_1_0_255_and_16_bit_0_65535(tmp_path):
    for name, value, dtype in (("a.png", 1, np.uint8), ("b.png", 255, np.uint8)) + (
        ("c.png", 65535, np.uint16),
        ("d.tif", 65535, np.uint16),
    ):
        mask = read_mask(saved(tmp_path, Image.fromarray(TRUTH.astype(dtype) * value), name))
        np.testing.assert_array_equal(mask, TRUTH * value, err_msg=name)


def test_bilevel_mask_reads_0_1_and_bilevel_image_0_255(tmp_path):
    path = saved(tmp_path, Image.fromarray(TRUTH).convert("1"), "m.png")
    np.testing.assert_array_equal(read_mask(path), TRUTH.astype(np.uint8))
    np.testing.assert_array_equal(read_image(path), TRUTH.astype(np.uint8) * 255)


def test_palette_mask_decodes_by_index_not_colour(tmp_path):
    # VOC-style: index 1 drawn dark red, whose grey value (38) is neither 1 nor 255.
    image = Image.fromarray(TRUTH.astype(np.uint8), mode="L").convert("P")
    image.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254)
    mask = read_mask(saved(tmp_path, image, "p.png"))
    np.testing.assert_array_equal(mask, TRUTH.astype(np.uint8))
    # As an image, the palette colour is what counts.
    assert set(np.unique(read_image(tmp_path / "p.png")).tolist()) == {0, 38}


def test_mask_in_the_alpha_channel_decodes_to_the_alpha(tmp_path):
    rgba = np.zeros((*TRUTH.shape, 4), dtype=np.uint8)  # black everywhere
    rgba[..., 3] = TRUTH * 255
    mask = read_mask(saved(tmp_path, Image.fromarray(rgba, "RGBA"), "alpha.png"))
    np.testing.assert_array_equal(mask, TRUTH * 255)
    la = np.stack([np.full(TRUTH.shape, 255, np.uint8), TRUTH.astype(np.uint8) * 255], -1)
    mask = read_mask(saved(tmp_path, Image.fromarray(la, "LA"), "la.png"))
    np.testing.assert_array_equal(mask, TRUTH * 255)


def test_opaque_and_agreeing_rgba_masks_decode_to_the_grey(tmp_path):
    rgba = np.repeat((TRUTH * 255).astype(np.uint8)[..., None], 4, -1)
    rgba[..., 3] = 255  # opaque: the grey channels hold the mask
    mask = read_mask(saved(tmp_path, Image.fromarray(rgba, "RGBA"), "opaque.png"))
    np.testing.assert_array_equal(mask, TRUTH * 255)
    rgba[..., 3] = TRUTH * 255  # white tumor on a transparent background: both agree
    mask = read_mask(saved(tmp_path, Image.fromarray(rgba, "RGBA"), "agree.png"))
    np.testing.assert_array_equal(mask, TRUTH * 255)


def test_ambiguous_alpha_and_colour_masks_are_refused(tmp_path):
    rgba = np.zeros((*TRUTH.shape, 4), dtype=np.uint8)
    rgba[..., :3] = TRUTH[..., None] * 255
    rgba[..., 3] = np.roll(TRUTH, 3, axis=1) * 255  # another region than the grey one
    with pytest.raises(ValueError, match=r"ambiguous.png: both the grey channel and the alpha"):
        read_mask(saved(tmp_path, Image.fromarray(rgba, "RGBA"), "ambiguous.png"))
    rgb = np.zeros((*TRUTH.shape, 3), dtype=np.uint8)
    rgb[..., 0] = TRUTH * 255  # red tumor on black
    with pytest.raises(ValueError, match=r"red.png: a colour mask .*single-channel"):
        read_mask(saved(tmp_path, Image.fromarray(rgb, "RGB"), "red.png"))
    # A grey mask saved as RGB is fine: its channels are equal.
    grey = np.repeat((TRUTH * 255).astype(np.uint8)[..., None], 3, -1)
    mask = read_mask(saved(tmp_path, Image.fromarray(grey, "RGB"), "grey.png"))
    np.testing.assert_array_equal(mask, TRUTH * 255)


def test_jpeg_is_refused_for_masks_but_read_for_images(tmp_path):
    path = saved(tmp_path, Image.fromarray(TRUTH.astype(np.uint8)), "m.jpg", quality=95)
    with pytest.raises(ValueError, match=r"m\.jpg: JPEG is lossy.*save masks as PNG or TIFF"):
        read_mask(path)
    assert read_image(path).shape == TRUTH.shape


def test_multi_page_tiff_is_refused_for_masks_and_images(tmp_path):
    pages = [Image.fromarray(m.astype(np.uint8) * 255) for m in (TRUTH, ~TRUTH)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    for read in (read_mask, read_image):
        with pytest.raises(ValueError, match=r"stack\.tif holds 2 pages.*one"):
            read(path)


def test_unsupported_suffix_names_the_file_and_the_readers(tmp_path):
    path = saved(tmp_path, Image.fromarray(TRUTH.astype(np.uint8)), "x.gif")
    for read in (read_mask, read_image):
        with pytest.raises(ValueError, match=r"x\.gif: unsupported file type '\.gif'.*\.png"):
            read(path)


def test_mat_reads_as_image_and_mask_through_the_registry(tmp_path):
    image, mask = slice_arrays(1)
    path = write_mat(tmp_path / "3.mat", image, mask)
    np.testing.assert_array_equal(read_image(path), image)
    np.testing.assert_array_equal(read_mask(path), mask)


def test_a_registered_format_is_read_everywhere(tmp_path, monkeypatch):
    fmt = Format("NumPy", (".npy",), lambda p: np.load(p), lambda p: np.load(p))
    monkeypatch.setattr(readers, "FORMATS", dict(FORMATS))
    readers.register_format(fmt)
    root = write_folder(tmp_path / "d", n=2, metadata=False)
    for sub in ("images", "masks"):
        np.save(root / sub / "2.npy", np.asarray(Image.open(root / sub / "2.png")))
        (root / sub / "2.png").unlink()
    samples = list(FolderSource(root))
    np.testing.assert_array_equal(samples[1].mask, np.load(root / "masks" / "2.npy"))
    np.testing.assert_array_equal(read_image(root / "images" / "2.npy"), samples[1].image)
    assert ".npy" in readers.suffixes()
    with pytest.raises(ValueError, match=r"format Lossy refuses masks: give mask_refusal"):
        readers.register_format(Format("Lossy", (".x",), read_image, None))


def test_read_mat_undoes_matlab_transpose_and_decodes_pid(tmp_path):
    image, mask = slice_arrays(0)
    sample = read_mat(write_mat(tmp_path / "7.mat", image, mask, pid="100360", label=3))
    np.testing.assert_array_equal(sample.image, image)
    np.testing.assert_array_equal(sample.mask, mask)
    assert sample.image.dtype == np.int16
    assert sample.meta == {"id": "7", "pid": "100360", "label": 3}


def test_mat_v5_is_rejected_with_the_fix(tmp_path):
    path = tmp_path / "1.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file, Platform: PCWIN".ljust(128, b" ") + bytes(64))
    with pytest.raises(ValueError, match=r"1\.mat is a MATLAB v5 file, not v7\.3.*-v7\.3"):
        read_mat(path)


def test_truncated_mat_is_reported_as_damaged(tmp_path):
    path = write_mat(tmp_path / "2.mat", *slice_arrays(0))
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(ValueError, match=r"2\.mat .*(damaged|corrupt).*prepare"):
        read_mat(path)


def test_garbage_mat_is_reported(tmp_path):
    path = tmp_path / "3.mat"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match=r"3\.mat is not a MATLAB v7\.3 .*corrupt"):
        read_mat(path)


def test_missing_cjdata_field_is_named(tmp_path):
    path = write_mat(tmp_path / "4.mat", *slice_arrays(0), skip=("tumorMask",))
    with pytest.raises(ValueError, match=r"4\.mat: cjdata lacks tumorMask"):
        read_mat(path)
    other = tmp_path / "5.mat"
    with h5py.File(other, "w") as f:
        f["something"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"5\.mat has no 'cjdata'"):
        read_mat(other)
