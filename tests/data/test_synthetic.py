import numpy as np
from scipy import ndimage

from brainseg.data.synthetic import SyntheticSource


def test_deterministic_and_seed_dependent():
    a, b = list(SyntheticSource(8, 4, 64, seed=1)), list(SyntheticSource(8, 4, 64, seed=1))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.mask, y.mask)
    other = SyntheticSource(8, 4, 64, seed=2).sample(0)
    assert not np.array_equal(other.image, a[0].image)


def test_lesion_counts_vary_and_tumors_are_brighter():
    source = SyntheticSource(num_slices=20, num_patients=5, size=96)
    samples = list(source)
    counts = [ndimage.label(s.mask)[1] for s in samples]
    assert 0 in counts and max(counts) >= 2 and 1 in counts
    areas = {int(s.mask.sum()) for s in samples if s.mask.any()}
    assert len(areas) > 5  # varied sizes
    for s in samples:
        assert s.image.dtype == np.uint8 and s.image.shape == (96, 96)
        assert set(np.unique(s.mask)) <= {0, 1}
        if s.mask.any():
            assert s.image[s.mask == 1].mean() > s.image[s.mask == 0].mean() + 60


def test_patients_labels_and_folds():
    source = SyntheticSource(num_slices=12, num_patients=4, size=32)
    metas = [s.meta for s in source]
    assert len(source) == 12
    assert [m["pid"] for m in metas[:4]] == ["P000", "P000", "P000", "P001"]
    assert {m["label"] for m in metas} == {1, 2, 3}
    folds = source.folds()
    fold_of_patient = {}
    for m in metas:  # a patient's slices share one fold
        assert fold_of_patient.setdefault(m["pid"], folds[m["id"]]) == folds[m["id"]]
    assert len(set(fold_of_patient.values())) == 4
