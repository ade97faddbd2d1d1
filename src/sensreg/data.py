"""Datasets: a registry of loaders, the fixed train/validation split, a device-resident loader.

Small datasets (MNIST- and CIFAR-sized) are held on the training device as normalized float
tensors and batched by indexing with a shuffled permutation: no DataLoader, no per-batch host
work. Training batches can be augmented on the device (random crop and flip, ``augment``).
ImageNet is read from image files instead (``imagefolder.py``), through a DataLoader fed with
the same index batches. Both kinds of split have ``len()``, ``device``, ``targets``,
``input_shape``, ``to(device)`` and ``subset(idx)``, and ``batches`` takes either.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable, Iterator, Sequence
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


# --- loaders ------------------------------------------------------------------------------------

# Per-channel (mean, std) of the training images, the usual normalization constants. CIFAR's are
# the pixel statistics of its 50,000 training images (some code uses a std of about 0.20 instead,
# which is the spread of per-image means, not of pixels).
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
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
    (mean,), (std,) = _STATS[name]

    def normalized(ds) -> Split:
        x = ds.data.unsqueeze(1).float().div_(255.0).sub_(mean).div_(std)
        return Split(x, ds.targets.long())

    return normalized(train), normalized(test)


def _synthetic(num_train: int = 1024, num_test: int = 512, num_classes: int = 10,
               noise: float = 1.0, shape: Sequence[int] = (1, 28, 28), seed: int = 1234) -> tuple[Split, Split]:
    """Class prototypes (smooth random images) plus Gaussian noise: learnable in a few epochs,
    the same for every run (its own seed), and shaped like MNIST unless ``shape`` (C, H, W) says
    otherwise (3, 32, 32: like CIFAR, for the CIFAR networks)."""
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, c, 7, 7, generator=g)
    prototypes = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)

    def draw(n: int) -> Split:
        y = torch.randint(num_classes, (n,), generator=g)
        x = prototypes[y] + noise * torch.randn(n, c, h, w, generator=g)
        return Split(x, y)

    return draw(num_train), draw(num_test)


def _torchvision_cifar(name: str, root: Path) -> tuple[Split, Split]:
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
    root_existed = root.exists()
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
        if not root_existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # the empty folder torchvision made before the download failed
        raise DatasetMissing(
            f"{cls.__name__} is not in {folder} and could not be downloaded ({type(err).__name__}: {err}). "
            f"Put the extracted files of {cls.filename} ({', '.join(f for f, _ in expected)}) in "
            f"{folder}, or set data.root to a folder that holds {cls.base_folder}, or run once with "
            f"internet access.") from None
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in _STATS[name])

    def normalized(ds) -> Split:
        # Held as normalized float32, like MNIST, not as uint8 normalized batch by batch: 600 MB
        # for the 50,000 training images fits any training GPU, and every reader of a split
        # (training, evaluation, the threshold search's many validation passes, reports) then
        # takes model-ready tensors, with no normalization step to remember.
        # torchvision holds the images as (N, 32, 32, 3) uint8; the models take (N, 3, 32, 32).
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous().float()
        return Split(x.div_(255.0).sub_(mean).div_(std), torch.tensor(ds.targets, dtype=torch.long))

    return normalized(train), normalized(test)


def _imagenet(root: Path, image_size: int = 224, resize: int = 256, augment: bool = True,
              **options):
    from .imagefolder import LoaderOptions, load_imagefolder  # imagefolder imports this module

    return load_imagefolder(root, image_size, resize, augment, LoaderOptions(**options))


LOADERS: dict[str, Callable[..., tuple[Split, Split]]] = {
    "mnist": lambda root, **_: _torchvision_mnist("mnist", Path(root)),
    "fashion_mnist": lambda root, **_: _torchvision_mnist("fashion_mnist", Path(root)),
    "cifar10": lambda root, **_: _torchvision_cifar("cifar10", Path(root)),
    "cifar100": lambda root, **_: _torchvision_cifar("cifar100", Path(root)),
    "synthetic": lambda root, **kw: _synthetic(**kw),
    "imagenet": lambda root, **kw: _imagenet(Path(root), **kw),
}
# Datasets read from image folders, batch by batch: never held on the device.
FOLDER_DATASETS = ("imagenet",)

# The shape of one input of each dataset, known before loading it: the config check builds the
# chosen model for it, so that a network that cannot take these inputs is refused up front.
# (LeNet-300-100 and LeNet-5 take CIFAR's too: their first layers size themselves to the input,
# 3,072 inputs for LeNet-300-100, a 1,250-input fc1 for LeNet-5.)
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28),
                                            "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
                                            "synthetic": (1, 28, 28)}


def input_shape(name: str, image_size: int = 224, synthetic_shape: Sequence[int] = (1, 28, 28)) -> tuple[int, ...]:
    """One input of dataset ``name``; a folder dataset's images are cropped to ``image_size``,
    the synthetic dataset's are ``synthetic_shape``."""
    if name in FOLDER_DATASETS:
        return (3, image_size, image_size)
    return tuple(synthetic_shape) if name == "synthetic" else INPUT_SHAPES[name]


# The number of classes of each dataset with a fixed label set (a few files may not show every
# label); the synthetic dataset's is an option of its loader, a folder dataset's its class folders.
NUM_CLASSES: dict[str, int] = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


def split_train_val(train: Split, val_fraction: float, split_seed: int) -> tuple[Split, Split]:
    """Hold out ``val_fraction`` of the training set, chosen by ``split_seed`` alone."""
    n = len(train)
    n_val = max(1, round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return train.subset(train_idx), train.subset(val_idx, evaluation=True)


def load_dataset(name: str, root: str | Path = "data", val_fraction: float = 0.1, split_seed: int = 0,
                 device: torch.device | str = "cpu", **options) -> Dataset:
    """Load dataset ``name`` and return its train/validation/test splits on ``device``."""
    if name not in LOADERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    full_train, test = LOADERS[name](root=root, **options)
    train, val = split_train_val(full_train, val_fraction, split_seed)
    return Dataset(train.to(device), val.to(device), test.to(device), _num_classes(name, full_train, test, options),
                   full_train.input_shape, pad_value(name), augmented_in_loader=name in FOLDER_DATASETS)


def load_test_split(name: str, root: str | Path = "data", device: torch.device | str = "cpu",
                    **options) -> tuple[Split, int, tuple[int, ...]]:
    """The test split alone (for re-evaluating a saved model)."""
    full_train, test = LOADERS[name](root=root, **options)
    return test.to(device), _num_classes(name, full_train, test, options), test.input_shape


def _num_classes(name: str, train: Split, test: Split, options: dict) -> int:
    if name in NUM_CLASSES:
        return NUM_CLASSES[name]
    if name in FOLDER_DATASETS:
        return len(train.classes)
    return int(options.get("num_classes", int(max(train.y.max(), test.y.max())) + 1))


def pad_value(name: str) -> tuple[float, ...]:
    """Each channel's value of a black pixel after ``name``'s normalization (0 if it has none)."""
    if name not in _STATS:
        return (0.0,)
    mean, std = _STATS[name]
    return tuple(-m / s for m, s in zip(mean, std))


# --- batching -----------------------------------------------------------------------------------

def batches(split: Split, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None, start: int = 0,
            shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
    """Minibatches of a split, shuffled by a random index permutation.

    The permutation is drawn on the CPU from ``generator`` so that the order is the same on
    every device; only the index tensor travels. ``start`` skips that many batches of the same
    order (to continue an epoch that was stopped part-way). ``shard=(rank, world)``: of each
    batch, the part that process ``rank`` of ``world`` takes (``part_of``); together the parts
    are the batch a single process would take. A folder split (``imagefolder.FolderSplit``)
    takes the same index batches (``index_batches``) and decodes their images in its DataLoader.
    """
    if not isinstance(split, Split):
        return split.batches(index_batches(len(split), batch_size, shuffle, generator, start, shard))
    return _device_batches(split, batch_size, shuffle, generator, start, shard)


def _device_batches(split: Split, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                    start: int, shard: tuple[int, int]) -> Iterator[tuple[Tensor, Tensor]]:
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.y.device) if shuffle else None
    for begin in range(start * batch_size, n, batch_size):
        if order is None:
            lo, hi = part_bounds(min(batch_size, n - begin), shard)
            yield split.x[begin + lo:begin + hi], split.y[begin + lo:begin + hi]
        else:
            idx = part_of(order[begin:begin + batch_size], shard)
            yield split.x[idx], split.y[idx]


def index_batches(n: int, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
                  start: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterator[Tensor]:
    """The indices (CPU) of each batch ``batches`` takes of ``n`` items, drawn as it draws them:
    one permutation from ``generator`` when the first batch is asked for."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for begin in range(start * batch_size, n, batch_size):
        yield part_of(order[begin:begin + batch_size], shard)


def part_bounds(n: int, shard: tuple[int, int]) -> tuple[int, int]:
    """[lo, hi): the contiguous part of ``n`` items that process ``rank`` of ``world`` takes, as
    ``Tensor.tensor_split`` divides them (the first n % world parts one item longer)."""
    rank, world = shard
    size, extra = divmod(n, world)
    lo = rank * size + min(rank, extra)
    return lo, lo + size + (rank < extra)


def part_of(t: Tensor, shard: tuple[int, int]) -> Tensor:
    """Process ``rank``'s part of ``t`` along its first dimension (see ``part_bounds``)."""
    if shard == (0, 1):
        return t
    lo, hi = part_bounds(t.shape[0], shard)
    return t[lo:hi]


def num_batches(split: Split, batch_size: int) -> int:
    return -(-len(split) // batch_size)


# --- augmentation -------------------------------------------------------------------------------

def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4,
                     fill: Sequence[float] | float = 0.0) -> Tensor:
    """The usual CIFAR training augmentation of a whole batch ``x`` (N, C, H, W), on its device.

    Each image is padded by ``padding`` pixels of value ``fill`` (one per channel, or one for
    all) on every side, cropped back to H x W at a random offset, and mirrored left-right with
    probability 1/2. The offsets and flips are drawn on the CPU from ``generator`` (as the
    shuffling order is), so that a seed gives the same augmentation on every device and a
    resumed run, given the generator's saved state, continues the same stream.
    """
    return crop_flip(x, crop_flip_draws(x.shape[0], generator, padding), padding, fill)


def crop_flip_draws(n: int, generator: torch.Generator, padding: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """The random part of ``random_crop_flip`` for ``n`` images: row offsets, column offsets
    and flips, in that order, on the CPU. (Drawn for a whole batch and then divided with
    ``part_of``, they give each process of a distributed run its images' share.)"""
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return top, left, flip


def crop_flip(x: Tensor, draws: tuple[Tensor, Tensor, Tensor], padding: int = 4,
              fill: Sequence[float] | float = 0.0) -> Tensor:
    """Crop and flip every image of ``x`` as ``draws`` (from ``crop_flip_draws``) say."""
    n, c, h, w = x.shape
    top, left, flip = (d.to(x.device) for d in draws)
    value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    padded = value.expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding:padding + h, padding:padding + w] = x
    # Source row and column of every output pixel, per image; a flip reverses the columns.
    rows = top[:, None] + torch.arange(h, device=x.device)
    cols = left[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # One gather for the whole batch: indexing dims 0, 2 and 3 around the channel slice gives
    # (N, H, W, C), which is permuted back (a channels-last view, what the models use).
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)
