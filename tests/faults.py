"""Runs a brainseg entry point that SIGKILLs itself at a chosen point, as a crash or `kill -9`
would, or is sent SIGTERM, as a scheduler stops a job: `python -m tests.faults MODULE [ARGS...]`,
with the point given by the environment.

- BRAINSEG_KILL_AT_BATCH=EPOCH:BATCH  at the start of that training batch (mid-epoch).
- BRAINSEG_TERM_AT_BATCH=EPOCH:BATCH  SIGTERM at the start of that training batch; the process
                                      goes on until it handles the signal.
- BRAINSEG_KILL_ON_REPLACE=NAME:N     at the N-th atomic write of a file whose name matches the
                                      pattern NAME, after its temporary is written and before it
                                      is moved into place.
"""

from __future__ import annotations

import fnmatch
import os
import runpy
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_on_replace(name: str, nth: int) -> None:
    replace, seen = os.replace, 0

    def replace_or_die(src, dst, *args, **kwargs):
        nonlocal seen
        if fnmatch.fnmatch(Path(dst).name, name):
            seen += 1
            if seen == nth:
                _die()
        return replace(src, dst, *args, **kwargs)

    os.replace = replace_or_die


def kill_at_batch(epoch: int, batch: int, signal_number: int = signal.SIGKILL) -> None:
    from brainseg.module import SegmentationModule

    def on_train_batch_start(module, _batch, batch_idx):
        if module.current_epoch == epoch and batch_idx == batch:
            os.kill(os.getpid(), signal_number)

    SegmentationModule.on_train_batch_start = on_train_batch_start


def main() -> None:
    if at := os.environ.get("BRAINSEG_KILL_AT_BATCH"):
        kill_at_batch(*(int(v) for v in at.split(":")))
    if at := os.environ.get("BRAINSEG_TERM_AT_BATCH"):
        kill_at_batch(*(int(v) for v in at.split(":")), signal_number=signal.SIGTERM)
    if at := os.environ.get("BRAINSEG_KILL_ON_REPLACE"):
        name, nth = at.rsplit(":", 1)
        kill_on_replace(name, int(nth))
    module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
