"""Test data for the data tests: .mat v7.3 files, image folders and a local HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

REAL_DATA = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "datasets"
    / "figshare-brain-tumor-png256"
)

MAT_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
    b"HDF5 schema 1.00 ."
)


def write_mat(
    path: Path,
    image: np.ndarray,
    mask: np.ndarray,
    pid: str = "100360",
    label: int = 1,
    skip: tuple[str, ...] = (),
) -> Path:
    """A slice in the layout of the figshare N.mat files (MATLAB v7.3: HDF5 with a user block)."""
    with h5py.File(path, "w", userblock_size=512) as f:
        group = f.create_group("cjdata")
        fields = {
            "image": image.astype(np.int16).T,  # MATLAB is column-major
            "tumorMask": mask.astype(np.uint8).T,
            "PID": np.array([[ord(c)] for c in pid], dtype=np.uint16),
            "label": np.array([[float(label)]]),
            "tumorBorder": np.zeros((1, 4)),
        }
        for name, value in fields.items():
            if name not in skip:
                group[name] = value
    with open(path, "r+b") as f:
        f.write(MAT_HEADER.ljust(116) + bytes(8) + b"\x00\x02IM")
    return path


def slice_arrays(index: int, shape: tuple[int, int] = (12, 16)) -> tuple[np.ndarray, np.ndarray]:
    """A non-square int16 slice whose values encode position, and a mask with one rectangle."""
    image = (np.arange(shape[0] * shape[1]).reshape(shape) * 7 + index).astype(np.int16)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2 : 5 + index % 3, 3:9] = 1
    return image, mask


def write_folder(
    root: Path, n: int = 6, size: int = 16, metadata: bool = True, empty: tuple[int, ...] = ()
) -> Path:
    """images/ and masks/ with PNGs named 1..n; masks 0/255, all-zero for ids in `empty`."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, n + 1):
        image = rng.integers(0, 255, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), dtype=np.uint8)
        if i not in empty:
            mask[2:8, 3 : 3 + i % 5 + 2] = 255
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    if metadata:
        rows = [
            f"{i},P{(i - 1) // 2},{(i - 1) // 2 % 3 + 1},{(i - 1) // 2 % 5 + 1}"
            for i in range(1, n + 1)
        ]
        (root / "metadata.csv").write_text("sample_id,pid,label,fold\n" + "\n".join(rows) + "\n")
    return root


def write_metadata(root: Path, rows: Sequence[tuple[str, str]]) -> Path:
    """Replace root/metadata.csv by `sample_id,pid` rows."""
    lines = ["sample_id,pid"] + [f"{sid},{pid}" for sid, pid in rows]
    path = root / "metadata.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


class FileServer:
    """Serves `files` ({"/path": bytes}) on 127.0.0.1, honouring Range.

    `cut[path] = n` makes the next response for path stop after n bytes and close the
    connection (the header still announces the whole length). `requests` records
    (path, Range header) of every request.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.cut:
                    body = body[: server.cut.pop(self.path)]
                    self.close_connection = True
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
