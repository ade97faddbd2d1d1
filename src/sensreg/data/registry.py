"""The datasets by name: one ``DatasetSpec`` each, and loading a dataset's splits from its spec.

To add a dataset: write its loader, ``loader(root, normalization, **options) -> (train, test)``
(in ``tensors.py`` if it fits on a device as tensors, else in ``folders.py``); add one
``DatasetSpec`` to ``DATASETS`` below, with the data.* keys it reads beyond those every dataset
reads (fields of ``config.DataConfig``) and their check (``dataset_checks.py``); add
``configs/data/NAME.yaml`` naming its node (``schema.data.NAME``: the keys it reads). Options
beyond name and root reach the loader through ``DataConfig.loader_options``. The config
check, training and the reports find the dataset here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sensreg.checks import Problems
from sensreg.errors import lookup

from . import folders, tensors
from .dataset_checks import check_image_files, check_synthetic
from .tensors import Dataset, Split, Stats


@dataclass(frozen=True)
class DatasetSpec:
    """What the rest of sensreg knows of a dataset before loading it."""

    name: str
    # (root, normalization, **options) -> (train, test): the full training split (the
    # validation split is held out of it here) and the test split.
    loader: Callable[..., tuple[Split, Split]]
    # One input, (C, H, W); None where the options choose it: the synthetic dataset's ``shape``,
    # a folder dataset's ``image_size``. Known before loading so that the config check can
    # build the chosen model for it and refuse a network that cannot take these inputs.
    input_shape: tuple[int, ...] | None
    # None where the data says: the synthetic dataset's ``num_classes`` option, a folder
    # dataset's class folders. (A fixed label set is given here since a few files may not show
    # every label.)
    num_classes: int | None
    # Per-channel (mean, std) with which the loader normalizes its tensors, and from which
    # ``pad_value`` follows. None: the loader has no such step (the synthetic dataset is generated
    # as it is used; a folder dataset normalizes each image as it decodes it, with
    # ``folders.IMAGENET_STATS``, and is not padded by the training loop), and the pad value is 0.
    normalization: Stats | None = None
    # Read from image files batch by batch, never held on the device; its training split
    # augments as it decodes (the training loop adds no crop and flip).
    from_files: bool = False
    # Images in the full training split, before the validation split is held out of it; None
    # where the options or the folder say (synthetic: num_train).
    train_size: int | None = None
    # The data.* keys it reads beyond those every dataset reads (EVERY_DATASET_READS): its
    # option's node holds them (run/config_groups.py), and the check of their values.
    own_keys: tuple[str, ...] = ()
    check: Callable[[Any, Problems], None] | None = None

    def reads(self, key: str) -> bool:
        """Whether ``data.KEY`` counts in a run on this dataset."""
        return key in EVERY_DATASET_READS or key in self.own_keys

    def load(self, root: str | Path = "data", **options) -> tuple[Split, Split]:
        return self.loader(root, self.normalization, **options)


# The data.* keys every dataset reads (the first fields of config.DataConfig), and those that
# only the generated dataset and the datasets decoded from image files read.
EVERY_DATASET_READS = ("name", "root", "val_fraction", "split_seed", "on_device", "eval_batch_size")
SYNTHETIC_KEYS = ("num_train", "num_test", "num_classes", "noise", "shape")
IMAGE_FILE_KEYS = ("augment", "image_size", "resize", "num_workers", "pin_memory", "persistent_workers",
                   "prefetch_factor")

# The usual normalization constants. CIFAR's are the pixel statistics of its 50,000 training
# images (some code uses a std of about 0.20 instead, which is the spread of per-image means, not
# of pixels). LeNet-300-100 and LeNet-5 take CIFAR's inputs too: their first layers size
# themselves to the input (3,072 inputs for LeNet-300-100, a 1,250-input fc1 for LeNet-5).
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("mnist", tensors.load_mnist, (1, 28, 28), 10, ((0.1307,), (0.3081,)), train_size=60_000),
    DatasetSpec("fashion_mnist", tensors.load_fashion_mnist, (1, 28, 28), 10, ((0.2860,), (0.3530,)),
                train_size=60_000),
    DatasetSpec("cifar10", tensors.load_cifar10, (3, 32, 32), 10,
                ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), train_size=50_000,
                own_keys=("augment",)),
    DatasetSpec("cifar100", tensors.load_cifar100, (3, 32, 32), 100,
                ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)), train_size=50_000,
                own_keys=("augment",)),
    DatasetSpec("synthetic", tensors.load_synthetic, None, None, own_keys=SYNTHETIC_KEYS,
                check=check_synthetic),
    DatasetSpec("imagenet", folders.load_imagenet, None, None, from_files=True, own_keys=IMAGE_FILE_KEYS,
                check=check_image_files),
)}

def input_shape(name: str, image_size: int = 224, synthetic_shape: Sequence[int] = (1, 28, 28)) -> tuple[int, ...]:
    """One input of dataset ``name``; a folder dataset's images are cropped to ``image_size``,
    the synthetic dataset's are ``synthetic_shape``."""
    spec = DATASETS[name]
    if spec.from_files:
        return (3, image_size, image_size)  # decoded as RGB
    return tuple(synthetic_shape) if spec.input_shape is None else spec.input_shape


def pad_value(name: str) -> tuple[float, ...]:
    """Each channel's value of a black pixel after ``name``'s normalization (0 if it has none)."""
    spec = DATASETS.get(name)
    if spec is None or spec.normalization is None:
        return (0.0,)
    mean, std = spec.normalization
    return tuple(-m / s for m, s in zip(mean, std))


def validation_size(n: int, val_fraction: float) -> int:
    """How many of ``n`` training images the validation split holds out (at least one)."""
    return max(1, round(n * val_fraction))


def split_train_val(train: Split, val_fraction: float, split_seed: int) -> tuple[Split, Split]:
    """Hold out ``val_fraction`` of the training set, chosen by ``split_seed`` alone."""
    n = len(train)
    n_val = validation_size(n, val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return train.subset(train_idx), train.subset(val_idx, evaluation=True)


def load_dataset(name: str, root: str | Path = "data", val_fraction: float = 0.1, split_seed: int = 0,
                 device: torch.device | str = "cpu", **options) -> Dataset:
    """Load dataset ``name`` and return its train/validation/test splits on ``device``."""
    spec = lookup(DATASETS, name, "dataset")
    full_train, test = spec.load(root, **options)
    train, val = split_train_val(full_train, val_fraction, split_seed)
    return Dataset(train.to(device), val.to(device), test.to(device), _num_classes(spec, full_train, test, options),
                   full_train.input_shape, pad_value(name), augmented_in_loader=spec.from_files)


def load_test_split(name: str, root: str | Path = "data", device: torch.device | str = "cpu",
                    **options) -> tuple[Split, int, tuple[int, ...]]:
    """The test split alone (for re-evaluating a saved model)."""
    spec = DATASETS[name]
    full_train, test = spec.load(root, **options)
    return test.to(device), _num_classes(spec, full_train, test, options), test.input_shape


def _num_classes(spec: DatasetSpec, train: Split, test: Split, options: dict) -> int:
    if spec.num_classes is not None:
        return spec.num_classes
    if spec.from_files:
        return len(train.classes)
    return int(options.get("num_classes", int(max(train.y.max(), test.y.max())) + 1))
