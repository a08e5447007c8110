"""Data: sources, the cache, splits, transforms and `BrainTumorDataModule`."""

from brainseg.data.sources import Sample, Source

__all__ = ["BrainTumorDataModule", "Sample", "Source"]


def __getattr__(name: str):
    # Import Lightning only when the data module is asked for: the CLI and sources start fast.
    if name == "BrainTumorDataModule":
        from brainseg.data.datamodule import BrainTumorDataModule

        return BrainTumorDataModule
    raise AttributeError(f"module 'brainseg.data' has no attribute {name!r}")
