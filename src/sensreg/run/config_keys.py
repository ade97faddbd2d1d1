"""Which config keys count for what, kept apart from ``config.py`` so that readers of run folders
that do not train (``sensreg compare``) can use them without importing torch."""

from __future__ import annotations

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
