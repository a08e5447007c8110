"""Reading checkpoint files without running code.

A `.ckpt` is a pickle, and unpickling may call any Python function the file names: a crafted
checkpoint runs its code on `torch.load(..., weights_only=False)`. Every checkpoint path a user
gives (predict, export, a resume, `fit=false`, the report's grids) is opened here instead, with
`weights_only=True`: tensors, storages and plain containers only, plus `SAFE_GLOBALS`. A file
that needs anything else is refused with `UntrustedCheckpointError`, which names what it needs
and the flag that loads it anyway (`trust_checkpoint=true`).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import pickletools
import re
from pathlib import Path
from typing import Any

import torch

# The command-line setting (train, predict, export) that loads a checkpoint with plain pickle.
TRUST_FLAG = "trust_checkpoint=true"

# Types a brainseg checkpoint holds beyond torch's own weights-only set (tensors, storages,
# OrderedDict, dtypes, devices, str/int/float/bool/None, list/tuple/dict). None today: the run
# configuration is saved resolved to plain containers, Lightning's loop, callback, optimizer,
# scheduler and precision states are plain dicts of tensors and numbers, and brainseg's own
# callbacks store a float and an int. tests/test_checkpoints.py checks real checkpoints of both
# networks against this tuple; a new type a future checkpoint needs goes here, by name.
SAFE_GLOBALS: tuple[Any, ...] = ()

_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


class UntrustedCheckpointError(ValueError):
    """A checkpoint that needs Python objects outside brainseg's checkpoint types to load."""


def load_checkpoint_file(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    trust: bool = False,
    mmap: bool = False,
) -> Any:
    """The object saved in `path`, unpickled without running code unless `trust`.

    Args:
        path: a file written by `torch.save` (a Lightning checkpoint).
        map_location: as for `torch.load`.
        trust: load with plain pickle, which runs whatever code the file names: only for files
            from a source the user trusts (`trust_checkpoint=true`).
        mmap: memory-map the tensors instead of reading them (`torch.load(mmap=True)`).

    Raises:
        UntrustedCheckpointError: the file needs more than `SAFE_GLOBALS` and `trust` is off;
            the message names what it needs and the flag.
        Whatever `torch.load` raises for a file it cannot read (truncated, not a checkpoint).
    """
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    try:
        with _allowed():
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        needed = _unsafe_globals(path, error)
        if not needed:
            raise
        raise UntrustedCheckpointError(
            f"checkpoint {path} needs Python objects that a brainseg checkpoint never holds "
            f"({', '.join(needed)}); unpickling them can run any code, so it was not loaded. "
            f"Only if you trust whoever made this file, pass {TRUST_FLAG} to load it anyway"
        ) from None


def _allowed() -> contextlib.AbstractContextManager:
    if not SAFE_GLOBALS:
        return contextlib.nullcontext()
    if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5
        return torch.serialization.safe_globals(list(SAFE_GLOBALS))
    torch.serialization.add_safe_globals(list(SAFE_GLOBALS))  # torch 2.4: process-wide
    return contextlib.nullcontext()


def _unsafe_globals(path: str | os.PathLike, error: Exception) -> list[str]:
    """What the refused file names beyond the allowed types: from a static read of its pickle
    (nothing is executed), else from the unpickler's message."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is not None and Path(path).is_file():
        try:
            with _allowed():
                found = finder(str(path))
            if found:
                return sorted(found)
        except Exception:  # not a zip checkpoint: a bare pickle, read below
            pass
    found = set(_GLOBAL_IN_MESSAGE.findall(str(error)))
    if Path(path).is_file():
        found |= _globals_of_bare_pickle(Path(path).read_bytes())
    return sorted(found)


def _globals_of_bare_pickle(data: bytes) -> set[str]:
    """The `module.name`s that the pickles of an old-format (non-zip) file import; empty for
    anything that is not a pickle. Reads the opcodes only."""
    names: set[str] = set()
    stream = io.BytesIO(data)
    while stream.tell() < len(data):  # the old format is several pickles in a row
        strings: list[str] = []
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.add(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.add(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # not (or no longer) a pickle: garbage, or tensor bytes after it
            break
    allowed = getattr(torch.serialization, "_weights_only_unpickler", None)
    if allowed is not None and hasattr(allowed, "_get_allowed_globals"):
        names -= set(allowed._get_allowed_globals())
    return names
