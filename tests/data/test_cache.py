import numpy as np
import pytest

from brainseg.data.cache import build_cache, cache_path, load_cache, resize_mask, to_uint8
from brainseg.data.synthetic import SyntheticSource


def test_roundtrip_shapes_dtypes_and_index(tmp_path):
    source = SyntheticSource(num_slices=10, num_patients=5, size=48)
    data = load_cache(build_cache(source, 32, tmp_path))
    assert data.images.shape == data.masks.shape == (10, 32, 32)
    assert data.images.dtype == data.masks.dtype == np.uint8
    assert set(np.unique(data.masks)) == {0, 1}
    assert list(data.ids) == [str(i) for i in range(10)]
    assert list(data.pids[:3]) == ["P000", "P000", "P001"]
    assert list(data.labels[:3]) == [1, 1, 2]
    assert (data.folds >= 1).all()


def test_built_once_and_rebuilt_when_size_or_source_changes(tmp_path):
    source = SyntheticSource(num_slices=6, num_patients=3, size=32)
    path = build_cache(source, 16, tmp_path)
    mtime = path.stat().st_mtime_ns
    assert build_cache(source, 16, tmp_path) == path and path.stat().st_mtime_ns == mtime
    assert build_cache(source, 24, tmp_path) != path
    assert build_cache(SyntheticSource(6, 3, 32, seed=1), 16, tmp_path) != path
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_int16_slices_are_scaled_and_masks_resized_nearest():
    image = np.linspace(-300, 2000, 64 * 64).reshape(64, 64).astype(np.int16)
    scaled = to_uint8(image)
    assert scaled.min() == 0 and scaled.max() == 255
    assert to_uint8(np.full((4, 4), 9, np.int16)).max() == 0
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 20:40] = 255
    small = resize_mask(mask, 32)
    assert set(np.unique(small)) == {0, 1}
    assert small.sum() == 10 * 10


class Exploding(SyntheticSource):
    """Dies halfway through the conversion, like a killed process."""

    def __iter__(self):
        for i, sample in enumerate(super().__iter__()):
            if i == 3:
                raise KeyboardInterrupt
            yield sample


def test_conversion_cut_off_halfway_leaves_nothing_then_rebuilds(tmp_path):
    source = Exploding(num_slices=8, num_patients=4, size=32)
    with pytest.raises(KeyboardInterrupt):
        build_cache(source, 16, tmp_path)
    assert list(tmp_path.iterdir()) == []
    # A stale temporary file of a dead process is not mistaken for a cache and is cleaned up.
    target = cache_path(SyntheticSource(8, 4, 32), 16, tmp_path)
    stale = tmp_path / f".{target.name}.999999999.tmp"
    stale.write_bytes(b"half a cache")
    path = build_cache(SyntheticSource(8, 4, 32), 16, tmp_path)
    assert path == target and not stale.exists()
    assert len(load_cache(path)) == 8


def test_unreadable_cache_says_to_rebuild(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match=r"x\.npz is unreadable .*delete it, and the next run"):
        load_cache(path)
