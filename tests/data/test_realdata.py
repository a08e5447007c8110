"""Checks over ../shared/datasets/figshare-brain-tumor-png256 (skipped when it is absent)."""

import numpy as np
import pytest
from datafiles import REAL_DATA

from brainseg.data.folder import FolderSource
from brainseg.data.splits import make_split

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"{REAL_DATA} is absent"),
]


def test_pairs_patients_and_tumor_types():
    source = FolderSource(REAL_DATA)
    ids = [sid for sid, _, _ in source.pairs()]
    meta = source.metadata()
    assert len(ids) == 3064 and ids[:3] == ["1", "2", "3"] and ids[-1] == "3064"
    assert len({meta[i]["pid"] for i in ids}) == 233
    labels = np.bincount([meta[i]["label"] for i in ids])
    assert labels.tolist() == [0, 708, 1426, 930]
    assert sorted(set(source.folds().values())) == [1, 2, 3, 4, 5]


def test_patient_split_is_disjoint_and_near_70_15_15():
    source = FolderSource(REAL_DATA)
    ids = [sid for sid, _, _ in source.pairs()]
    pids = np.array([source.metadata()[i]["pid"] for i in ids])
    subsets = make_split(ids, pids)
    sides = [set(pids[subsets == s]) for s in ("train", "val", "test")]
    assert not sides[0] & sides[1] and not sides[0] & sides[2] and not sides[1] & sides[2]
    assert abs(np.mean(subsets == "train") - 0.7) < 0.01
    assert abs(np.mean(subsets == "test") - 0.15) < 0.01


@pytest.mark.slow
def test_cache_at_256_and_verify(tmp_path):
    from brainseg.data.cache import build_cache, load_cache

    source = FolderSource(REAL_DATA)
    data = load_cache(build_cache(source, 256, tmp_path))
    assert data.images.shape == (3064, 256, 256) and data.masks.any(axis=(1, 2)).all()
    assert set(np.unique(data.masks)) == {0, 1}
    assert source.verify() == []
