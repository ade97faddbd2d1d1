"""Datasets held as tensors: the ``Split`` and ``Dataset`` containers and the loaders of MNIST,
Fashion-MNIST, CIFAR-10/100 (through torchvision's classes) and the synthetic dataset.

Every loader is called as ``loader(root, normalization, **options)`` and returns the training
and test splits, normalized with its dataset's per-channel ``normalization`` (mean, std) from
the registry (``registry.DATASETS``), which is where those constants live.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import first_existing
from ..errors import UserError

# Per-channel (mean, std) of a dataset's training images.
Stats = tuple[tuple[float, ...], tuple[float, ...]]


class DatasetMissing(UserError, RuntimeError):
    """The dataset is not on disk and could not be fetched: a mistake in the input, like a bad
    value (exit code 2, nothing trained, no run folder left), not a failure of the run."""


@dataclass
class Split:
    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def targets(self) -> Tensor:
        return self.y

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, idx: Tensor, evaluation: bool = False) -> "Split":
        """The samples at ``idx`` (``evaluation`` matters to folder splits only: augmentation of
        tensor splits is applied by the training loop, not by the split)."""
        return Split(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    # Each channel's value of a black pixel after normalization: what the padding of a random
    # crop is filled with, as when the crop is taken from the raw image before normalizing it.
    pad_value: tuple[float, ...] = (0.0,)
    # The training split augments its images as it decodes them (folder datasets): the training
    # loop adds no crop and flip of its own.
    augmented_in_loader: bool = False


# --- MNIST and Fashion-MNIST --------------------------------------------------------------------

# Where Debian's dataset-fashion-mnist package puts the original files.
_DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def load_mnist(root: str | Path, normalization: Stats, **_) -> tuple[Split, Split]:
    return _torchvision_mnist("mnist", Path(root), normalization)


def load_fashion_mnist(root: str | Path, normalization: Stats, **_) -> tuple[Split, Split]:
    return _torchvision_mnist("fashion_mnist", Path(root), normalization)


def _torchvision_mnist(name: str, root: Path, normalization: Stats) -> tuple[Split, Split]:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"
    existed = first_existing(raw)  # what is above it is the user's; below it, what a failure made
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
        present = [f for f in _FILES if (raw / f).is_file() or (raw / f.removesuffix(".gz")).is_file()]
        if len(present) == len(_FILES):  # all there, yet unreadable: damaged, not missing
            raise DatasetMissing(
                f"{cls.__name__}: the files in {raw} are there but cannot be read ({type(err).__name__}: "
                f"{err}); they are damaged or not the published ones. They are left as they are: replace "
                f"them with the four original .gz files ({', '.join(_FILES)}), deleting any extracted "
                f"copies beside them.") from None
        _remove_made_folders(raw, existed)
        raise DatasetMissing(
            f"{cls.__name__} is not in {raw} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Put the four original .gz files ({', '.join(_FILES)}) in {raw}, or set data.root to a "
            f"folder that holds {cls.__name__}/raw, or run once with internet access.") from None
    (mean,), (std,) = normalization

    def normalized(ds) -> Split:
        x = ds.data.unsqueeze(1).float().div_(255.0).sub_(mean).div_(std)
        return Split(x, ds.targets.long())

    return normalized(train), normalized(test)


def _remove_made_folders(deepest: Path, existed: Path) -> None:
    """Remove the empty folders from ``deepest`` up to, not including, ``existed``: those a failed
    download made (torchvision creates data.root and the dataset's folders before it fails), so
    that a mistyped data.root leaves no tree behind."""
    path = deepest
    while path != existed and existed in path.parents:
        try:
            path.rmdir()  # only if empty: a file put there stays, and so does its folder
        except OSError:
            return
        path = path.parent


# --- CIFAR-10 and CIFAR-100 ---------------------------------------------------------------------

def load_cifar10(root: str | Path, normalization: Stats, **_) -> tuple[Split, Split]:
    return _torchvision_cifar("cifar10", Path(root), normalization)


def load_cifar100(root: str | Path, normalization: Stats, **_) -> tuple[Split, Split]:
    return _torchvision_cifar("cifar100", Path(root), normalization)


def _torchvision_cifar(name: str, root: Path, normalization: Stats) -> tuple[Split, Split]:
    """CIFAR-10 or CIFAR-100 in torchvision's layout (``<root>/cifar-10-batches-py``,
    ``<root>/cifar-100-python``), downloaded there when files are missing.

    When every file is present nothing is downloaded: torchvision checks them against the md5
    sums of the published files, and a mismatch is an error that names the files, rather than a
    silent download over them. Files of another origin (the small ones the tests write in the
    same format) are accepted only where torchvision's class lists their md5 sums; nothing here
    skips or loosens that check.
    """
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / cls.base_folder
    expected = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    complete = all((folder / f).is_file() for f, _ in expected)
    existed = first_existing(folder)
    try:
        train = cls(str(root), train=True, download=not complete)
        test = cls(str(root), train=False, download=False)
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError variously
        if complete:
            bad = [f for f, md5 in expected if not check_integrity(str(folder / f), md5)]
            raise DatasetMissing(
                f"{cls.__name__}: the files in {folder} do not match the md5 sums of the published "
                f"dataset ({', '.join(bad) or type(err).__name__ + ': ' + str(err)}). They are left "
                f"as they are: replace them with the originals, or delete {folder} to download it "
                f"again.") from None
        _remove_made_folders(folder, existed)
        raise DatasetMissing(
            f"{cls.__name__} is not in {folder} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Put the extracted files of {cls.filename} ({', '.join(f for f, _ in expected)}) in "
            f"{folder}, or set data.root to a folder that holds {cls.base_folder}, or run once with "
            f"internet access.") from None
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization)

    def normalized(ds) -> Split:
        # Held as normalized float32, like MNIST, not as uint8 normalized batch by batch: 600 MB
        # for the 50,000 training images fits any training GPU, and every reader of a split
        # (training, evaluation, the threshold search's many validation passes, reports) then
        # takes model-ready tensors, with no normalization step to remember.
        # torchvision holds the images as (N, 32, 32, 3) uint8; the models take (N, 3, 32, 32).
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous().float()
        return Split(x.div_(255.0).sub_(mean).div_(std), torch.tensor(ds.targets, dtype=torch.long))

    return normalized(train), normalized(test)


# --- synthetic ----------------------------------------------------------------------------------

def load_synthetic(root: str | Path, normalization: None, num_train: int = 1024, num_test: int = 512,
                   num_classes: int = 10, noise: float = 1.0, shape: Sequence[int] = (1, 28, 28),
                   seed: int = 1234) -> tuple[Split, Split]:
    """Class prototypes (smooth random images) plus Gaussian noise: learnable in a few epochs,
    the same for every run (its own seed), and shaped like MNIST unless ``shape`` (C, H, W) says
    otherwise (3, 32, 32: like CIFAR, for the CIFAR networks). Generated, so nothing is read
    from ``root`` and nothing is normalized."""
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, c, 7, 7, generator=g)
    prototypes = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)

    def draw(n: int) -> Split:
        y = torch.randint(num_classes, (n,), generator=g)
        x = prototypes[y] + noise * torch.randn(n, c, h, w, generator=g)
        return Split(x, y)

    return draw(num_train), draw(num_test)
