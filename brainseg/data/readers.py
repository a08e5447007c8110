"""One reader per file format, chosen by file suffix: how every slice and mask is read.

The folder source, the figshare source and `brainseg-predict` all read through `read_image`
and `read_mask` here, so a format reads the same everywhere. A new format is one `Format` and
one `register_format` call. Masks are decoded by what the file means (docs/data.md, "File
formats"):

- grey (8- or 16-bit) and bilevel files: the stored values (0/1, 0/255 or 0/65535);
- palette (P-mode) files: the palette index, not the colour it is drawn in;
- a mask in the alpha channel (colour channels constant, alpha 0/255): the alpha channel;
- refused: lossy formats (JPEG), colour masks, multi-page files, unknown suffixes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, UnidentifiedImageError

from brainseg.data.sources import Sample

# PIL modes that hold one value per pixel, read as they are stored.
SINGLE_CHANNEL_MODES = ("1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
# Colour modes whose channels decode to a mask (with an alpha channel last where present).
COLOUR_MODES = {"RGB": False, "RGBA": True, "LA": True}


@dataclass(frozen=True)
class Format:
    """A file format: the suffixes it is known by and how it reads as an image and as a mask.

    Attributes:
        name: how messages name the format.
        suffixes: lower-case file endings, with the dot.
        read_image: path -> (H, W) array of any numeric dtype.
        read_mask: path -> (H, W) array of the stored mask values; None when the format
            cannot hold a mask faithfully.
        mask_refusal: why masks in this format are refused, and the fix (with read_mask None).
    """

    name: str
    suffixes: tuple[str, ...]
    read_image: Callable[[Path], np.ndarray]
    read_mask: Callable[[Path], np.ndarray] | None
    mask_refusal: str = ""


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> None:
    """Make `fmt` the reader of each of its suffixes (replacing an earlier one)."""
    if fmt.read_mask is None and not fmt.mask_refusal:
        raise ValueError(f"format {fmt.name} refuses masks: give mask_refusal, the reason and fix")
    for suffix in fmt.suffixes:
        FORMATS[suffix.lower()] = fmt


def suffixes() -> tuple[str, ...]:
    """Every suffix a reader is registered for."""
    return tuple(FORMATS)


def format_of(path: str | os.PathLike) -> Format:
    """The format that reads `path`, by its suffix; a ValueError naming the file otherwise."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(FORMATS)}, or remove the file"
        )
    return fmt


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A grey (H, W) slice from any registered format (colour is converted to grey)."""
    path = Path(path)
    image = format_of(path).read_image(path)
    if image.ndim != 2 or min(image.shape) < 2:
        raise ValueError(f"{path}: expected a 2D slice, found an array of shape {image.shape}")
    return image


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A (H, W) mask with its stored values (0/1, 0/255 or 0/65535 in a valid mask).

    Whether the values are binary is checked by `sources.check_pair`, which names them.
    """
    path = Path(path)
    fmt = format_of(path)
    if fmt.read_mask is None:
        raise ValueError(f"{path}: {fmt.mask_refusal}")
    return fmt.read_mask(path)


# ---- Formats that PIL reads: PNG, TIFF, BMP, JPEG ---------------------------------------------


def _load(path: Path, as_mask: bool) -> tuple[str, np.ndarray]:
    """(PIL mode, array) of a single-page image file. Images of other than one channel are
    converted to grey here; masks are returned with all their channels (or palette indices)."""
    try:
        with Image.open(path) as img:
            pages = getattr(img, "n_frames", 1)
            if pages == 1:
                mode = img.mode
                keep = as_mask or mode in SINGLE_CHANNEL_MODES
                # np.asarray of a P-mode image is its palette indices; convert("L") its colours.
                array = np.asarray(img if keep else img.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"cannot read {path} ({error}): re-export it or remove the pair"
        ) from error
    if pages != 1:
        raise ValueError(
            f"{path} holds {pages} pages; a slice or mask file must hold one: save each page "
            "as its own file (reading only the first would drop the others silently)"
        )
    if array.dtype == bool:  # mode "1"
        array = array.astype(np.uint8)
    return mode, array


def read_pil_image(path: Path) -> np.ndarray:
    """A grey slice: single-channel files as stored (8/16/32-bit), others by ITU-R 601 luma.

    A bilevel ("1") image reads as 0/255.
    """
    mode, array = _load(path, as_mask=False)
    return array * np.uint8(255) if mode == "1" else array


def read_pil_mask(path: Path) -> np.ndarray:
    """The mask a lossless image file means (see the module docstring for the rules)."""
    mode, array = _load(path, as_mask=True)
    if mode in SINGLE_CHANNEL_MODES or mode == "P":
        return array  # stored values; for "P" the palette index
    if mode not in COLOUR_MODES:
        raise ValueError(
            f"{path}: a mask in PIL mode {mode} has no stated meaning here; save it as a "
            "single-channel (grey) PNG or TIFF with values 0/255 or 0/1"
        )
    colour = array[..., :-1] if COLOUR_MODES[mode] else array
    if (colour != colour[..., :1]).any():
        raise ValueError(
            f"{path}: a colour mask (its channels differ), whose colours could mean classes: "
            "save it as a single-channel (grey) PNG or TIFF with values 0/255 or 0/1"
        )
    grey = colour[..., 0]
    if not COLOUR_MODES[mode]:
        return grey
    alpha = array[..., -1]
    if (alpha == alpha.flat[0]).all():
        return grey  # opaque (or uniformly transparent): the grey channel holds the mask
    if (grey == grey.flat[0]).all() or ((grey > 0) == (alpha > 0)).all():
        return alpha  # the mask lives in the alpha channel (e.g. black with 0/255 alpha)
    raise ValueError(
        f"{path}: both the grey channel and the alpha channel vary, and differently, so which "
        "one is the mask is ambiguous: save the mask as a single-channel (grey) PNG or TIFF"
    )


register_format(Format("PNG", (".png",), read_pil_image, read_pil_mask))
register_format(Format("TIFF", (".tif", ".tiff"), read_pil_image, read_pil_mask))
register_format(Format("BMP", (".bmp",), read_pil_image, read_pil_mask))
register_format(
    Format(
        "JPEG",
        (".jpg", ".jpeg"),
        read_pil_image,
        None,
        mask_refusal=(
            "JPEG is lossy, so a mask saved as JPEG has lost its edges, and a 0/1 mask its "
            "tumor: save masks as PNG or TIFF (JPEG is accepted for images only)"
        ),
    )
)


# ---- The figshare slices: MATLAB v7.3 (HDF5) files holding a `cjdata` struct ----------------

CJDATA_FIELDS = ("image", "tumorMask", "PID", "label")
MAT_FIX = "delete it and run `python -m brainseg.data prepare` to extract it again from its zip"


def read_mat(path: str | os.PathLike) -> Sample:
    """Read one slice N.mat (MATLAB v7.3, HDF5) of the figshare data set."""
    path = Path(path)
    with _cjdata(path) as group:
        # MATLAB writes column-major arrays, so h5py sees them transposed.
        image = np.asarray(group["image"]).T
        mask = np.asarray(group["tumorMask"]).T
        pid = _pid(group)
        label = int(np.asarray(group["label"]).ravel()[0])
    return Sample(image, mask, {"id": path.stem, "pid": pid, "label": label})


def read_pid(path: str | os.PathLike) -> str:
    """The patient id of one slice N.mat, without reading its image."""
    with _cjdata(Path(path)) as group:
        return _pid(group)


def _pid(group: h5py.Group) -> str:
    return "".join(chr(int(c)) for c in np.asarray(group["PID"]).ravel()).strip("\x00 ")


@contextmanager
def _cjdata(path: Path) -> Iterator[h5py.Group]:
    """The file's `cjdata` struct; a ValueError naming the file and the fix when it, or what
    is read from it, is not a slice of the data set."""
    if not h5py.is_hdf5(path):
        raise ValueError(_not_hdf5_message(path))
    try:
        with h5py.File(path, "r") as f:
            group = f.get("cjdata")
            if not isinstance(group, h5py.Group):
                raise ValueError(
                    f"{path} has no 'cjdata' struct (found {sorted(f.keys())}); {MAT_FIX}"
                )
            missing = [k for k in CJDATA_FIELDS if k not in group]
            if missing:
                raise ValueError(f"{path}: cjdata lacks {', '.join(missing)}; {MAT_FIX}")
            yield group
    except (OSError, KeyError, TypeError, IndexError) as error:
        raise ValueError(f"{path} is damaged ({error}); {MAT_FIX}") from error


def _not_hdf5_message(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(128)
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        return (
            f"{path} is a MATLAB v5 file, not v7.3 (HDF5): re-save it in MATLAB with "
            f"save(file, 'cjdata', '-v7.3'), or {MAT_FIX}"
        )
    return f"{path} is not a MATLAB v7.3 (HDF5) file, it is corrupt or truncated: {MAT_FIX}"


register_format(
    Format(
        "MATLAB v7.3 (figshare cjdata)",
        (".mat",),
        lambda path: read_mat(path).image,
        lambda path: read_mat(path).mask,
    )
)
