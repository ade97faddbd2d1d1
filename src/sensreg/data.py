"""Datasets: a registry of loaders, the fixed train/validation split, a device-resident loader.

Small datasets (MNIST-sized) are held on the training device as normalized float tensors and
batched by indexing with a shuffled permutation: no DataLoader, no per-batch host work.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


class DatasetMissing(RuntimeError):
    """The dataset is not on disk and could not be fetched."""


@dataclass
class Split:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]


# --- loaders ------------------------------------------------------------------------------------

# (mean, std) of the training images, the usual normalization constants.
_MNIST_STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
# Where Debian's dataset-fashion-mnist package puts the original files.
_DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _torchvision_mnist(name: str, root: Path) -> tuple[Split, Split]:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"
    if name == "fashion_mnist" and _DEBIAN_FASHION.is_dir():
        # Debian ships the same images, recompressed (so torchvision's checksums of the .gz files
        # do not match). torchvision reads the decompressed files when they exist, so decompress
        # them into our data root (never write beside the originals).
        raw.mkdir(parents=True, exist_ok=True)
        for f in _FILES:
            target = raw / f.removesuffix(".gz")
            if (_DEBIAN_FASHION / f).exists() and not target.exists():
                with gzip.open(_DEBIAN_FASHION / f, "rb") as src, open(target.with_suffix(".part"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                target.with_suffix(".part").replace(target)
    try:
        train = cls(str(root), train=True, download=True)
        test = cls(str(root), train=False, download=True)
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError variously
        for folder in (raw, raw.parent):  # the empty folders torchvision made before it failed
            try:
                folder.rmdir()
            except OSError:
                break
        raise DatasetMissing(
            f"{cls.__name__} is not in {raw} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Put the four original .gz files ({', '.join(_FILES)}) in {raw}, or set data.root to a "
            f"folder that holds {cls.__name__}/raw, or run once with internet access.") from None
    mean, std = _MNIST_STATS[name]

    def normalized(ds) -> Split:
        x = ds.data.unsqueeze(1).float().div_(255.0).sub_(mean).div_(std)
        return Split(x, ds.targets.long())

    return normalized(train), normalized(test)


def _synthetic(num_train: int = 1024, num_test: int = 512, num_classes: int = 10,
               noise: float = 1.0, seed: int = 1234) -> tuple[Split, Split]:
    """Class prototypes (smooth random 28x28 images) plus Gaussian noise: learnable in a few
    epochs, the same for every run (its own seed), and shaped like MNIST."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, 1, 7, 7, generator=g)
    prototypes = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)

    def draw(n: int) -> Split:
        y = torch.randint(num_classes, (n,), generator=g)
        x = prototypes[y] + noise * torch.randn(n, 1, 28, 28, generator=g)
        return Split(x, y)

    return draw(num_train), draw(num_test)


LOADERS: dict[str, Callable[..., tuple[Split, Split]]] = {
    "mnist": lambda root, **_: _torchvision_mnist("mnist", Path(root)),
    "fashion_mnist": lambda root, **_: _torchvision_mnist("fashion_mnist", Path(root)),
    "synthetic": lambda root, **kw: _synthetic(**kw),
}

# The shape of one input of each dataset, known before loading it: the config check builds the
# chosen model for it, so that a network that cannot take these inputs is refused up front.
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
                                            "synthetic": (1, 28, 28)}


def split_train_val(train: Split, val_fraction: float, split_seed: int) -> tuple[Split, Split]:
    """Hold out ``val_fraction`` of the training set, chosen by ``split_seed`` alone."""
    n = len(train)
    n_val = max(1, round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return Split(train.x[train_idx], train.y[train_idx]), Split(train.x[val_idx], train.y[val_idx])


def load_dataset(name: str, root: str | Path = "data", val_fraction: float = 0.1, split_seed: int = 0,
                 device: torch.device | str = "cpu", **options) -> Dataset:
    """Load dataset ``name`` and return its train/validation/test splits on ``device``."""
    if name not in LOADERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    full_train, test = LOADERS[name](root=root, **options)
    train, val = split_train_val(full_train, val_fraction, split_seed)
    num_classes = int(max(full_train.y.max(), test.y.max())) + 1
    if name == "synthetic":
        num_classes = int(options.get("num_classes", num_classes))
    return Dataset(train.to(device), val.to(device), test.to(device), num_classes,
                   tuple(full_train.x.shape[1:]))


def load_test_split(name: str, root: str | Path = "data", device: torch.device | str = "cpu",
                    **options) -> tuple[Split, int, tuple[int, ...]]:
    """The test split alone (for re-evaluating a saved model)."""
    full_train, test = LOADERS[name](root=root, **options)
    num_classes = int(options.get("num_classes", int(max(full_train.y.max(), test.y.max())) + 1))
    return test.to(device), num_classes, tuple(test.x.shape[1:])


# --- batching -----------------------------------------------------------------------------------

def batches(split: Split, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Minibatches of a device-resident split, shuffled by a random index permutation.

    The permutation is drawn on the CPU from ``generator`` so that the order is the same on
    every device; only the index tensor travels. ``start`` skips that many batches of the same
    order (to continue an epoch that was stopped part-way).
    """
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.y.device) if shuffle else None
    for begin in range(start * batch_size, n, batch_size):
        if order is None:
            yield split.x[begin:begin + batch_size], split.y[begin:begin + batch_size]
        else:
            idx = order[begin:begin + batch_size]
            yield split.x[idx], split.y[idx]


def num_batches(split: Split, batch_size: int) -> int:
    return -(-len(split) // batch_size)
