import hashlib
import socket

import pytest

from brainseg.data.download import download, md5sum

DATA = bytes(range(256)) * 4000  # ~1 MB: several chunks
MD5 = hashlib.md5(DATA).hexdigest()


def test_good_file_lands_in_place_with_nothing_left_over(server, tmp_path):
    server.files["/1"] = DATA
    dest = download(f"{server.url}/1", tmp_path / "f.zip", MD5, size=len(DATA))
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "f.zip.part").exists()
    # A second call finds the verified file and does not download again.
    download(f"{server.url}/1", dest, MD5)
    assert len(server.requests) == 1


def test_md5_mismatch_leaves_no_file_and_names_url_and_fix(server, tmp_path):
    server.files["/1"] = DATA
    with pytest.raises(
        ValueError, match=r"MD5 of the file downloaded from .*/1 is .* expected 0{32}.*Run again"
    ):
        download(f"{server.url}/1", tmp_path / "f.zip", "0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_with_wrong_md5_is_reported_not_overwritten(server, tmp_path):
    dest = tmp_path / "f.zip"
    dest.write_bytes(b"something else")
    with pytest.raises(ValueError, match=r"f\.zip exists but its MD5 .*delete it"):
        download(f"{server.url}/1", dest, MD5)
    assert dest.read_bytes() == b"something else"


def test_cut_connection_resumes_with_range_on_the_next_run(server, tmp_path):
    server.files["/1"] = DATA
    server.cut["/1"] = 300_000
    dest = tmp_path / "f.zip"
    with pytest.raises(RuntimeError, match=r"failed after 300000 bytes.*again to resume"):
        download(f"{server.url}/1", dest, MD5, size=len(DATA), retries=0)
    assert not dest.exists()
    assert (tmp_path / "f.zip.part").stat().st_size == 300_000
    download(f"{server.url}/1", dest, MD5, size=len(DATA), retries=0)
    assert dest.read_bytes() == DATA
    assert server.requests[-1] == ("/1", "bytes=300000-")


def test_cut_connection_is_resumed_within_one_call(server, tmp_path):
    server.files["/1"] = DATA
    server.cut["/1"] = 123_457
    download(f"{server.url}/1", tmp_path / "f.zip", MD5, retries=1)
    assert md5sum(tmp_path / "f.zip") == MD5
    assert [r for _, r in server.requests] == [None, "bytes=123457-"]


def test_part_already_complete_is_just_verified(server, tmp_path):
    (tmp_path / "f.zip.part").write_bytes(DATA)
    download(f"{server.url}/missing", tmp_path / "f.zip", MD5, size=len(DATA))
    assert (tmp_path / "f.zip").read_bytes() == DATA
    assert server.requests == []


def test_offline_error_says_what_failed_and_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError) as info:
        download(f"http://127.0.0.1:{port}/3381290", tmp_path / "a.zip", MD5, retries=0, timeout=5)
    message = str(info.value)
    assert "cannot reach the server" in message
    assert str(tmp_path / "a.zip") in message and "data=folder" in message


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(RuntimeError, match="HTTP 404"):
        download(f"{server.url}/nope", tmp_path / "a.zip", MD5, retries=3)
    assert len(server.requests) == 1
