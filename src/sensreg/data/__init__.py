"""Datasets: a registry of loaders, the fixed train/validation split, a device-resident loader.

Small datasets (MNIST- and CIFAR-sized) are held on the training device as normalized float
tensors and batched by indexing with a shuffled permutation: no DataLoader, no per-batch host
work. Training batches can be augmented on the device (random crop and flip, ``augment``).
ImageNet is read from image files instead (``folders.py``), through a DataLoader fed with
the same index batches. Both kinds of split have ``len()``, ``device``, ``targets``,
``input_shape``, ``to(device)`` and ``subset(idx)``, and ``batches`` takes either.

Modules, each with one job (each imports only modules listed before it):

- ``tensors``: ``Split`` and ``Dataset``, ``DatasetMissing``, the loaders of the datasets held
  as tensors (MNIST, Fashion-MNIST, CIFAR, synthetic);
- ``folders``: splits of image files decoded by a DataLoader (ImageNet);
- ``batching``: the shuffled, resumable, sharded batches of either kind of split;
- ``augment``: the random crop and flip of tensor batches, on the device;
- ``registry``: one ``DatasetSpec`` per dataset, and loading by name (``load_dataset``).
"""

from .augment import crop_flip, crop_flip_draws, random_crop_flip
from .batching import batches, index_batches, num_batches, part_bounds, part_of
from .registry import (DATASETS, DatasetSpec, input_shape,
                       load_dataset, load_test_split, pad_value, split_train_val)
from .tensors import Dataset, DatasetMissing, Split

__all__ = [
    "DATASETS", "Dataset", "DatasetMissing",
    "DatasetSpec", "Split", "batches", "crop_flip", "crop_flip_draws", "index_batches",
    "input_shape", "load_dataset", "load_test_split", "num_batches", "pad_value", "part_bounds",
    "part_of", "random_crop_flip", "split_train_val",
]
