"""Weights & Biases in one home: a training run's identity, logger and summary (`run.py`), the
slices and tables it shows (`media.py`), and a sweep's report run and dashboard
(`dashboard.py`). Nothing outside this package imports wandb."""
