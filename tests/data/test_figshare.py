import hashlib
import io
import zipfile

import h5py
import numpy as np
import pytest
from datafiles import slice_arrays, write_mat

from brainseg.data.cache import build_cache, load_cache
from brainseg.data.figshare import FigshareSource, RemoteFile
from brainseg.data.readers import read_mat
from brainseg.data.sources import ContentCheck


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _mat_bytes(tmp_path, i: int, pid: str) -> bytes:
    return write_mat(
        tmp_path / f"src{i}.mat", *slice_arrays(i), pid=pid, label=i % 3 + 1
    ).read_bytes()


def _table(blobs: dict[str, bytes]) -> list[RemoteFile]:
    return [
        RemoteFile(name, 100 + k, hashlib.md5(b).hexdigest(), len(b))
        for k, (name, b) in enumerate(blobs.items())
    ]


@pytest.fixture
def article(server, tmp_path):
    """Two zips (slices 1-3 and 4-11) and cvind.mat served like figshare; returns the file table."""
    mats = {i: _mat_bytes(tmp_path, i, pid=f"{100 + (i - 1) // 2}") for i in range(1, 12)}
    cvind = tmp_path / "cvind_src.mat"
    with h5py.File(cvind, "w") as f:
        f["cvind"] = np.array([[(i - 1) // 2 % 5 + 1 for i in range(1, 12)]], dtype=float)
    blobs = {
        "a_1-3.zip": _zip({f"{i}.mat": mats[i] for i in (1, 2, 3)}),
        "b_4-11.zip": _zip({f"{i}.mat": mats[i] for i in range(4, 12)}),
        "cvind.mat": cvind.read_bytes(),
    }
    table = _table(blobs)
    for remote, data in zip(table, blobs.values(), strict=True):
        server.files[f"/files/{remote.id}"] = data
    return table


def test_full_flow_downloads_extracts_reads_in_numeric_order(server, article, tmp_path):
    source = FigshareSource(tmp_path / "fs", base_url=f"{server.url}/files", files=article)
    source.prepare()
    samples = list(source)
    assert [s.meta["id"] for s in samples] == [str(i) for i in range(1, 12)]
    assert samples[9].meta == {"id": "10", "pid": "104", "label": 2}
    np.testing.assert_array_equal(samples[9].image, slice_arrays(10)[0])
    assert source.folds() == {str(i): (i - 1) // 2 % 5 + 1 for i in range(1, 12)}
    assert source.verify() == []
    data = load_cache(build_cache(source, 8, tmp_path / "cache"))
    assert data.images.shape == (11, 8, 8) and data.images.max() > 240  # int16 scaled to 0..255
    assert data.folds.tolist() == [(i - 1) // 2 % 5 + 1 for i in range(1, 12)]
    # A second prepare downloads nothing.
    count = len(server.requests)
    source.prepare()
    assert len(server.requests) == count


def test_cache_key_follows_the_file_table_not_the_root(tmp_path, article):
    a = FigshareSource(tmp_path / "a", files=article)
    assert a.cache_key() == FigshareSource(tmp_path / "b", files=article).cache_key()
    assert a.cache_key() != FigshareSource(tmp_path / "a").cache_key()


def test_reading_before_prepare_says_to_prepare(tmp_path, article):
    with pytest.raises(FileNotFoundError, match="not yet extracted.*prepare"):
        len(FigshareSource(tmp_path, files=article))


def test_download_off_and_file_missing_names_file_and_fix(tmp_path, article):
    source = FigshareSource(tmp_path, files=article, download=False)
    with pytest.raises(FileNotFoundError, match=r"a_1-3\.zip is missing.*put a_1-3\.zip .* into"):
        source.prepare()


def test_truncated_zip_names_the_zip_and_the_fix(tmp_path, server):
    whole = _zip({"1.mat": _mat_bytes(tmp_path, 1, "1")})
    broken = whole[: len(whole) // 2]
    table = _table({"t.zip": broken})
    server.files[f"/files/{table[0].id}"] = broken
    source = FigshareSource(tmp_path / "fs", base_url=f"{server.url}/files", files=table)
    with pytest.raises(ValueError, match=r"t\.zip is damaged .*delete it and run .*prepare"):
        source.prepare()
    assert not (tmp_path / "fs" / "mat" / ".t.zip.done").exists()


def test_extraction_cut_off_halfway_is_redone_on_the_next_run(server, article, tmp_path):
    source = FigshareSource(tmp_path / "fs", base_url=f"{server.url}/files", files=article)
    source.prepare()
    mat_dir = tmp_path / "fs" / "mat"
    # As if the second zip was being extracted when the process died.
    (mat_dir / ".b_4-11.zip.done").unlink()
    (mat_dir / "9.mat").unlink()
    (mat_dir / ".10.mat.999999999.tmp").write_bytes(b"half")
    with pytest.raises(FileNotFoundError, match=r"b_4-11\.zip not yet extracted"):
        list(source)
    source.prepare()
    assert len(source) == 11 and not list(mat_dir.glob(".*.tmp"))
    assert read_mat(mat_dir / "9.mat").meta["pid"] == "104"


def test_verify_reports_a_corrupt_mat(server, article, tmp_path):
    source = FigshareSource(tmp_path / "fs", base_url=f"{server.url}/files", files=article)
    source.prepare()
    (tmp_path / "fs" / "mat" / "5.mat").write_bytes(b"not hdf5")
    problems = source.verify()
    assert len(problems) == 1 and "5.mat" in problems[0]


def test_patient_ids_read_from_pid_alone_match_the_slices(server, article, tmp_path):
    source = FigshareSource(tmp_path / "fs", base_url=f"{server.url}/files", files=article)
    source.prepare()
    from_slices = {sample.meta["id"]: sample.meta["pid"] for sample in source}
    assert source.patient_ids() == from_slices
    assert list(from_slices) == [str(i) for i in range(1, 12)] and from_slices["9"] == "104"
    (tmp_path / "fs" / "mat" / "5.mat").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match=r"5\.mat is not a MATLAB v7\.3"):
        source.patient_ids()


def test_cvind_in_matlab_v5_format_is_read(tmp_path):
    from scipy.io import savemat

    from brainseg.data.figshare import read_cvind

    savemat(tmp_path / "cvind.mat", {"cvind": np.array([[1], [2], [5]], dtype=float)})
    assert read_cvind(tmp_path / "cvind.mat").tolist() == [1, 2, 5]


def test_verify_passes_valid_slices_to_the_content_check(server, article, tmp_path):
    source = FigshareSource(tmp_path / "fs", base_url=f"{server.url}/files", files=article)
    source.prepare()
    image, mask = slice_arrays(5)
    write_mat(tmp_path / "fs" / "mat" / "5.mat", image, 1 - mask)  # inverted
    content = ContentCheck()
    assert source.verify(content) == []
    assert content.count == 11
    (warning,) = content.warnings()
    assert warning.startswith("1 of 11 mask(s) cover more than 50%") and "mat/5.mat (" in warning
