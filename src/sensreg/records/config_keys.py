"""Which config keys count for what, and configs saved by older versions read as this version's:
what readers of run folders need of a config (``sensreg compare``, ``report``, checkpoints),
apart from ``run/config.py`` so that they can use it without importing torch."""

from __future__ import annotations

import copy
from typing import Any

# Sections of the composed config that are not part of the experiment: the CLI reads them
# (logger: the experiment trackers, trackers.py).
NOT_EXPERIMENT = ("logger",)
# Keys that say where and how a run executes, not what it computes: left out of the config hash
# and free to change when a run is resumed.
NOT_COMPUTATION = (("trainer", "device"), ("trainer", "progress"), ("trainer", "channels_last"),
                   ("trainer", "checkpoint_every"), ("trainer", "resume"), ("data", "root"),
                   ("data", "num_workers"), ("data", "pin_memory"), ("data", "persistent_workers"),
                   ("data", "prefetch_factor"))
# Keys added after runs had been saved without them, each with the value that does what those
# runs did: at that value a key is left out of the config hash (so a config keeps the hash it had
# before the key existed), and a saved config that lacks it is read as having it
# (config.upgrade_config: so such a run can be resumed, re-evaluated and reported).
# data.image_size and data.resize are read by folder datasets only, and no run on one predates
# them: any value reproduces the older runs, and their defaults keep those runs' hashes.
LATER_KEYS: dict[tuple[str, str], Any] = {("data", "augment"): False, ("trainer", "precision"): "fp32",
                                           ("trainer", "compile"): False, ("prune", "batchnorm"): False,
                                           ("prune", "scope"): "global",
                                           ("data", "image_size"): 224, ("data", "resize"): 256,
                                           ("data", "shape"): [1, 28, 28], ("sens", "reduction"): "batch",
                                           ("sens", "scale"): "none", ("sens", "gamma"): 1.0,
                                           ("sens", "scale_over"): "tensor", ("prune", "target"): None,
                                           ("prune", "initial"): 0.0, ("prune", "start_step"): None,
                                           ("prune", "end_step"): None, ("model", "arch"): None,
                                           ("model", "factory"): None, ("model", "kwargs"): {}}


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A config as an older version saved it (config.yaml, a checkpoint's config), read as this
    version's: every key added since (``LATER_KEYS``) that a saved section lacks gets the value
    that does what the older version did. The one place old run folders are translated; readers
    index the result directly. Sections the config does not have stay absent."""
    out = {section: (dict(values) if isinstance(values, dict) else values) for section, values in saved.items()}
    for (section, key), old in LATER_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section].setdefault(key, copy.deepcopy(old))
    return out


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"sens": {"lam": 1e-4}} -> {"sens.lam": 1e-4}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
