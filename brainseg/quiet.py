"""Known harmless chatter kept off the console: Lightning's tips, a FLOPs count it cannot make,
library deprecation notes. The run's own messages, warnings and errors stay."""

from __future__ import annotations

import logging
import re
import warnings

# Console messages dropped whole (the run's train.log keeps them).
NOISE = (
    re.compile(r"^💡 Tip:"),  # Lightning advertising add-on packages
    re.compile(r"`anonymous` setting", re.I),  # wandb, about an argument Lightning passes
)
# A line dropped from a message: Lightning's model summary counts 0 FLOPs when the module has no
# example input, which reads as a fault.
ZERO_FLOPS = re.compile(r"^\s*0\s+Total Flops\s*$\n?", re.M)
# Python warnings of the libraries that say nothing about this run.
KNOWN_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning on torch's pytree API
    r".*`anonymous` setting",  # wandb
    r".*does not have many workers",  # the smoke preset loads in the main process on purpose
)


class KnownNoise(logging.Filter):
    """A logging filter for the console handler (hydra/job_logging/brainseg.yaml)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(pattern.search(message) for pattern in NOISE):
            return False
        if ZERO_FLOPS.search(message):
            record.msg, record.args = ZERO_FLOPS.sub("", message), None
        return True


def mute_known_warnings() -> None:
    """Ignores the `KNOWN_WARNINGS` in this process (a run's, not the test suite's)."""
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
