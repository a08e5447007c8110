"""brainseg: compare 2D brain-tumor MRI segmentation networks honestly."""

from pathlib import Path

__version__ = "0.1.0"

# The Hydra configuration tree of every entry point (train, data, models, predict, export).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
