"""Verified, resumable HTTP download with a progress bar."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

CHUNK = 1 << 20


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    md5: str,
    size: int | None = None,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download `url` to `dest` unless a file with the right MD5 is already there.

    Bytes arrive in `dest + ".part"`; an interrupted download resumes from there (HTTP
    Range) on the next try or the next run. The file is renamed into place only after its
    MD5 matches, so `dest` is either absent or complete.

    Args:
        url: where to fetch the file.
        dest: final path of the file.
        md5: expected hex MD5 of the whole file.
        size: expected size in bytes, when known (sets the progress total, catches overlong parts).
        retries: how many times a dropped connection is resumed within this call.
        timeout: socket timeout in seconds.
    """
    dest = Path(dest)
    if dest.exists():
        found = md5sum(dest)
        if found == md5:
            return dest
        raise ValueError(
            f"{dest} exists but its MD5 is {found}, expected {md5}: delete it and run again "
            f"to download it afresh from {url}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Path(f"{dest}.part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, size, timeout)
            break
        except (OSError, http.client.HTTPException) as error:
            if attempt < retries and not _is_http_error(error):
                continue
            got = part.stat().st_size if part.exists() else 0
            again = f"Run the same command again to resume from {part}" if got else "Run again"
            raise RuntimeError(
                f"download of {url} failed after {got} bytes: {_reason(error)}. {again} once "
                "the server is reachable; if this machine is offline, fetch the file "
                f"elsewhere and put it at {dest} (md5 {md5}), or train on a local copy with "
                "data=folder data.root=<folder with images/ and masks/>"
            ) from error
    found = md5sum(part)
    if found != md5:
        part.unlink()
        raise ValueError(
            f"MD5 of the file downloaded from {url} is {found}, expected {md5}; the partial file "
            f"was deleted. Run again to download it afresh, or set a different base_url (mirror) "
            "if the server keeps sending this content"
        )
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, size: int | None, timeout: float) -> None:
    """Append the missing bytes of `url` to `part`."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()  # longer than the file can be: not a prefix of it
        offset = 0
    if size is not None and offset == size:
        return
    request = urllib.request.Request(url, headers={"User-Agent": "brainseg"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing after offset: the part is already whole
            return
        raise
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored Range and sends the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        mode = "ab" if offset else "wb"
        with (
            open(part, mode) as f,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5]
            ) as bar,
        ):
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def _is_http_error(error: BaseException) -> bool:
    # A 404 or 403 will not go away by retrying; a dropped connection may.
    return isinstance(error, urllib.error.HTTPError)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot reach the server ({error.reason})"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed before the end of the file"
    return f"{type(error).__name__}: {error}"
