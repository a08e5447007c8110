"""brainseg: compare 2D brain-tumor MRI segmentation networks honestly."""

__version__ = "0.1.0"
