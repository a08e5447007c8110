"""What makes two runs comparable: the settings that define a run, and its protocol fingerprint.

A run's *settings* are its resolved configuration, flattened to dotted keys, less the keys that
only say where or how fast it ran (paths, loggers, workers, progress bars, ...). Two runs are
repeats of one variant when their settings differ in nothing but the seed and the fold.

Its *protocol* fingerprint says what it was tested on: a hash of the test slices' ids and masks,
a hash of the whole data set, the image size, the preset, the training length and the code. Two
runs are paired slice by slice only when their test sets' hashes agree.

`brainseg.train` writes both into `metrics.json`; `brainseg.report` groups and pairs by them.
Its *variant key* (`variant_key`) names a variant by its settings where only a name fits: the
W&B dashboard groups runs by it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# Keys that repeat a comparison rather than define what is compared.
REPEAT_KEYS = ("seed", "data.fold", "data.seed")

# Keys (and key prefixes) that say where, how fast or how verbosely a run executed, not what it
# trained or tested: two runs differing only here are the same variant.
EXECUTION_KEYS = (
    "paths",
    "logger",
    "callbacks",
    "hydra",
    "ckpt_path",
    "fit",
    "test",
    "timing",
    "networks",  # the preset's sizes of every network: `model.*` holds the resolved ones
    "runtime",  # precision policy, compile, layout: `trainer.precision` holds what ran
    "trust_checkpoint",
    "offline",
    "weights_dir",
    "optimized_metric",
    "data.root",
    "data.source.root",
    "data.cache_dir",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.eval_batch_size",
    "data.augment_on",
    "data.on_device",
    "model.weights_path",
    "model.weights_dir",
    "trainer._target_",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps",
    "trainer.benchmark",
    "trainer.max_time",
)


def content_hash(*arrays: np.ndarray | Iterable[str]) -> str:
    """A short sha256 of arrays' shapes, types and bytes (strings are hashed as text)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        if array.dtype.kind in "OUS":
            digest.update("\n".join(map(str, array.ravel())).encode())
        else:
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def hash_test_set(ids: np.ndarray, masks: np.ndarray) -> str | None:
    """The fingerprint of a test set: its slice ids and their masks, in id order."""
    if len(ids) == 0:
        return None
    ids = np.asarray(ids).astype(str)
    order = np.argsort(ids, kind="stable")
    return content_hash(ids[order], np.asarray(masks)[order])


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def is_execution_key(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in EXECUTION_KEYS)


def run_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that define a run: its flattened configuration less execution keys and
    repeat keys, values made comparable (numbers as numbers, the rest as text)."""
    return {
        key: _comparable(value)
        for key, value in sorted(flatten(config).items())
        if not is_execution_key(key) and key not in REPEAT_KEYS
    }


def variant_key(settings: Mapping[str, Any]) -> str:
    """`<model>-<hash of the settings>`: the same for the seeds and folds of one variant,
    different for runs that differ in any other setting."""
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return f"{settings.get('model.name', 'model')}-{content_hash([text])[:8]}"


def differing_keys(settings: Iterable[Mapping[str, Any]]) -> list[str]:
    """The keys whose value is not the same in every one of `settings` (absent counts)."""
    settings = list(settings)
    keys = sorted({key for s in settings for key in s})
    missing = object()
    return [k for k in keys if len({repr(s.get(k, missing)) for s in settings}) > 1]


def _comparable(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    return str(value)
