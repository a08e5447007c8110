"""The figshare brain tumor data set (Cheng et al., article 1512427): download and unzip.

Its .mat slices are read by `brainseg.data.readers.read_mat`, as every format is.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from brainseg.atomic import atomic_path
from brainseg.data.download import download
from brainseg.data.readers import read_mat, read_pid
from brainseg.data.sources import ContentCheck, Sample, Source, check_pair, natural_key

BASE_URL = "https://ndownloader.figshare.com/files"


@dataclass(frozen=True)
class RemoteFile:
    """One file of the figshare article: its name, figshare file id, MD5 and size in bytes."""

    name: str
    id: int
    md5: str
    size: int


FILES = (
    RemoteFile(
        "brainTumorDataPublic_1-766.zip", 3381290, "74b949ad33f042e6e103523091cd1428", 214401279
    ),
    RemoteFile(
        "brainTumorDataPublic_767-1532.zip", 3381296, "7e8a875500d2c8a346f270538e29890e", 217848429
    ),
    RemoteFile(
        "brainTumorDataPublic_1533-2298.zip", 3381293, "8227bf6080cb71f15a88be8d25c79ae7", 215563856
    ),
    RemoteFile(
        "brainTumorDataPublic_2299-3064.zip", 3381302, "b378a80d6174e5317d59eb28430c6652", 231679762
    ),
    RemoteFile("cvind.mat", 7005344, "5ea82eb3212c9fcb84290ccf0beb486d", 5736),
)


class FigshareSource(Source):
    """The original MATLAB v7.3 slices, downloaded into `root` on `prepare()`.

    Layout under `root`: the downloaded zips and `cvind.mat`, and `mat/N.mat` extracted
    from the zips (a `mat/.<zip>.done` marker per zip records a finished extraction).

    Args:
        root: folder for the downloads and the extracted files.
        base_url: files are fetched from `{base_url}/{file id}` (a mirror, or a test server).
        download: fetch missing files; when False, a missing file is an error.
        files: the file table; the figshare article's by default.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        base_url: str = BASE_URL,
        download: bool = True,
        files: Sequence[RemoteFile] = FILES,
    ) -> None:
        self.root = Path(root)
        self.base_url = base_url.rstrip("/")
        self.download = download
        self.files = tuple(files)

    @property
    def mat_dir(self) -> Path:
        return self.root / "mat"

    def cache_key(self) -> str:
        # The MD5s fix the content, wherever root is.
        return "figshare-1512427:" + ",".join(f.md5 for f in self.files)

    def prepare(self) -> None:
        """Download the missing files and extract the zips not yet extracted."""
        for remote in self.files:
            if remote.name.endswith(".zip") and self._marker(remote).exists():
                continue
            path = self._fetch(remote)
            if remote.name.endswith(".zip"):
                extract_mats(path, self.mat_dir)
                self._marker(remote).touch()

    def _fetch(self, remote: RemoteFile) -> Path:
        path = self.root / remote.name
        if not self.download and not path.exists():
            raise FileNotFoundError(
                f"{path} is missing and download is off: put {remote.name} "
                f"({self.base_url}/{remote.id}, md5 {remote.md5}) into {self.root}, "
                "or set data.source.download=true"
            )
        return download(f"{self.base_url}/{remote.id}", path, remote.md5, remote.size)

    def _marker(self, remote: RemoteFile) -> Path:
        return self.mat_dir / f".{remote.name}.done"

    def mat_files(self) -> list[Path]:
        """The extracted N.mat files in numeric order."""
        zips = [f for f in self.files if f.name.endswith(".zip")]
        missing = [f.name for f in zips if not self._marker(f).exists()]
        if missing:
            raise FileNotFoundError(
                f"{', '.join(missing)} not yet extracted into {self.mat_dir}: run "
                "`python -m brainseg.data prepare` (or call prepare()) first"
            )
        return sorted(self.mat_dir.glob("*.mat"), key=lambda p: natural_key(p.stem))

    def __len__(self) -> int:
        return len(self.mat_files())

    def __iter__(self) -> Iterator[Sample]:
        for path in self.mat_files():
            yield read_mat(path)

    def folds(self) -> dict[str, int] | None:
        path = self.root / "cvind.mat"
        if not path.exists():
            return None
        cvind = read_cvind(path)
        return {str(i + 1): int(k) for i, k in enumerate(cvind)}

    def patient_ids(self) -> dict[str, str]:
        """{slice id: patient id}, read from each file's PID alone (no image is read)."""
        return {path.stem: read_pid(path) for path in self.mat_files()}

    def verify(self, content: ContentCheck | None = None) -> list[str]:
        problems = []
        for path in tqdm(self.mat_files(), desc="verify", unit="slice"):
            try:
                sample = read_mat(path)
            except (ValueError, OSError) as error:
                problems.append(str(error))
                continue
            found = check_pair(sample.image, sample.mask, str(path))
            problems += found
            if content is not None and not found:
                content.add(str(path), sample.image, sample.mask)
        return problems


def extract_mats(zip_path: Path, out_dir: Path) -> list[Path]:
    """Extract every .mat member of `zip_path` flat into `out_dir`, each file atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.infolist() if m.filename.endswith(".mat")]
            for member in tqdm(members, desc=f"unzip {zip_path.name}", unit="file"):
                target = out_dir / Path(member.filename).name
                with (
                    atomic_path(target) as tmp,
                    archive.open(member) as src,
                    open(tmp, "wb") as dst,
                ):
                    while block := src.read(1 << 20):
                        dst.write(block)
                written.append(target)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as error:
        raise ValueError(
            f"{zip_path} is damaged ({error}): delete it and run `python -m brainseg.data prepare` "
            "again to download it afresh"
        ) from error
    if not written:
        raise ValueError(f"{zip_path} holds no .mat files: delete it and download it again")
    return written


def read_cvind(path: str | os.PathLike) -> np.ndarray:
    """The 5-fold patient-wise assignment `cvind` (values 1..5, one per slice)."""
    path = Path(path)
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            return np.asarray(f["cvind"]).ravel().astype(int)
    from scipy.io import loadmat  # cvind.mat is a MATLAB v5 file on figshare

    try:
        return np.asarray(loadmat(path)["cvind"]).ravel().astype(int)
    except Exception as error:
        raise ValueError(
            f"cannot read the folds from {path} ({error}): delete it and run prepare again"
        ) from error
