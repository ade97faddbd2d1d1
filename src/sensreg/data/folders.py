"""Folder datasets (ImageNet): images decoded from files batch by batch, in DataLoader workers.

ImageNet does not fit on a device as tensors (1.28 million training images; about 770 GB as
float32 at 224 x 224), so its splits hold file paths and labels, and a ``DataLoader`` decodes
and transforms the images of each batch in worker processes. The batches are the same as those
of a tensor split: ``batching.batches`` draws the same index permutation and hands each index batch
to the loader (as its batch sampler), so a seed gives the same order whatever the split's kind,
and ``start`` and ``shard`` mean the same.

Layout: torchvision's ``ImageFolder``, ``<root>/train/<class>/<image>`` and
``<root>/val/<class>/<image>``. ImageNet's official validation images come in one flat folder;
they have to be sorted into class folders first, as torchvision's ``ImageNet`` tooling does.
The ``val`` folder is the test split; the validation split (threshold search, model selection)
is held out of ``train``.

Training augmentation (random resized crop, flip) is drawn where the images are decoded, from
torch's generator in each worker process (seeded by the DataLoader from torch's own when the
workers start). Those draws are not part of a checkpoint: an interrupted run resumes with the
same order of batches but fresh crops and flips.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import few_names
from .tensors import DatasetMissing

# The per-channel mean and std of ImageNet's training pixels that torchvision's models use.
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

LAYOUT = ("<root>/train/<class>/<image>.JPEG and <root>/val/<class>/<image>.JPEG (torchvision's "
          "ImageFolder layout; ImageNet's validation images sorted into one folder per class, as "
          "torchvision's ImageNet tooling does)")


@dataclass(frozen=True)
class LoaderOptions:
    """How a folder split's batches are produced: by how many workers, into pinned memory or not.
    These change the speed, not the images (except for which random draws augment them)."""

    num_workers: int = 8
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2


@dataclass(eq=False)
class FolderSplit:
    """A split of image files: paths (relative to ``folder``, as bytes in one numpy array, which
    worker processes can share without touching Python objects) and their class indices.

    ``train``: training images get the training transform (random resized crop and flip when
    ``augment``), all others the evaluation one. ``device``: where the batches go. The splits of
    one dataset share nothing: each has its own ``DataLoader``, made at its first pass and kept,
    so that persistent workers serve every later pass (every epoch, every validation pass of
    the threshold search).
    """

    folder: Path
    paths: np.ndarray
    targets: Tensor
    classes: list[str]
    image_size: int = 224
    resize: int = 256
    augment: bool = True
    train: bool = False
    options: LoaderOptions = field(default_factory=LoaderOptions)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _loader: torch.utils.data.DataLoader | None = field(default=None, repr=False, compare=False)
    _busy: bool = field(default=False, repr=False, compare=False)

    def __len__(self) -> int:
        return self.targets.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def to(self, device: torch.device | str) -> "FolderSplit":
        """The same images, batches delivered to ``device`` (nothing is loaded now)."""
        return replace(self, device=torch.device(device), _loader=None, _busy=False)

    def subset(self, idx: Tensor, evaluation: bool = False) -> "FolderSplit":
        """The images at ``idx``; ``evaluation``: read with the evaluation transform."""
        return replace(self, paths=self.paths[idx.numpy()], targets=self.targets[idx],
                       train=self.train and not evaluation, _loader=None, _busy=False)

    def transform(self):
        return image_transform(self.image_size, self.resize, self.train and self.augment)

    def batches(self, index_batches: Iterable[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        """The images and labels of each index batch, decoded by the DataLoader, on ``device``.

        ``index_batches`` is consumed lazily, as the loader's workers ask for work. A second pass
        over this split begun while one is under way gets a loader of its own.
        """
        busy = self._busy
        loader = self._new_loader(persistent=False) if busy else self._shared_loader()
        loader.batch_sampler.batches = (b.tolist() for b in index_batches)
        self._busy = True
        try:
            for x, y in loader:
                # From pinned memory the copy to a GPU overlaps the work that follows.
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        finally:
            if not busy:
                self._busy = False

    def _shared_loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            self._loader = self._new_loader(persistent=self.options.persistent_workers)
        return self._loader

    def _new_loader(self, persistent: bool) -> torch.utils.data.DataLoader:
        o = self.options
        workers = {"persistent_workers": persistent, "prefetch_factor": o.prefetch_factor} \
            if o.num_workers > 0 else {}  # DataLoader refuses both without workers
        return torch.utils.data.DataLoader(
            _Images(str(self.folder), self.paths, self.targets, self.transform()),
            batch_sampler=_IndexBatches(), num_workers=o.num_workers,
            # Pinning is for copies to a GPU; on the CPU it only costs a copy.
            pin_memory=o.pin_memory and self.device.type == "cuda",
            collate_fn=functools.partial(_collate, shape=self.input_shape), **workers)


class _IndexBatches:
    """A DataLoader's batch sampler whose batches are set before each pass (``FolderSplit.batches``):
    one loader, and with it one set of persistent workers, serves every epoch's order."""

    def __init__(self):
        self.batches: Iterable[list[int]] = ()

    def __iter__(self):
        return iter(self.batches)


class _Images(torch.utils.data.Dataset):
    """Image ``i``: its file decoded as RGB and transformed, and its class index."""

    def __init__(self, folder: str, paths: np.ndarray, targets: Tensor, transform):
        self.folder, self.paths, self.targets, self.transform = folder, paths, targets, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from torchvision.datasets.folder import pil_loader

        image = pil_loader(os.path.join(self.folder, os.fsdecode(self.paths[i])))
        return self.transform(image), self.targets[i]


def _collate(samples: list[tuple[Tensor, Tensor]], shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    # An empty batch is one process's part of a batch smaller than the number of processes.
    if not samples:
        return torch.empty(0, *shape), torch.empty(0, dtype=torch.long)
    return torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])


def image_transform(image_size: int, resize: int, augment: bool):
    """The usual ImageNet transforms (torchvision's reference recipe), on the decoded PIL image.

    Training (``augment``): a random crop of 8-100 % of the area and 3/4-4/3 aspect ratio,
    resized to ``image_size`` square, mirrored with probability 1/2. Otherwise: the shorter
    side resized to ``resize``, the central ``image_size`` square cut out. Then scaled to
    [0, 1] and normalized with ImageNet's statistics. Random draws come from torch's generator
    of the process that decodes (a worker's, seeded by the DataLoader from torch's own).
    """
    from torchvision.transforms import v2

    if augment:
        geometry = [v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(resize), v2.CenterCrop(image_size)]
    mean, std = IMAGENET_STATS
    # Resizing and cropping the PIL image (before ToImage) is done by PIL, as in torchvision's
    # reference scripts; ToImage + ToDtype(scale=True) is what ToTensor did.
    return v2.Compose([*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def load_imagenet(root: str | Path, normalization: None = None, image_size: int = 224,
                  resize: int = 256, augment: bool = True, **options) -> tuple[FolderSplit, FolderSplit]:
    """ImageNet's loader in the registry: ``options`` are the ``LoaderOptions``. ``normalization``
    is None: the images are normalized as they are decoded (``image_transform``), not as tensors."""
    return load_imagefolder(Path(root), image_size, resize, augment, LoaderOptions(**options))


def load_imagefolder(root: str | Path, image_size: int = 224, resize: int = 256, augment: bool = True,
                     options: LoaderOptions | None = None,
                     name: str = "ImageNet") -> tuple[FolderSplit, FolderSplit]:
    """The training folder (training transform) and the test folder (``val``) of ``root``.

    Classes are the class folders of ``train``, sorted (as ImageFolder numbers them); ``val``
    must have the same ones. Nothing is downloaded.
    """
    root = Path(root).expanduser()
    options = options or LoaderOptions()
    train_classes = _classes(root, "train", name)
    val_classes = _classes(root, "val", name)
    if val_classes != train_classes:
        missing = sorted(set(train_classes) - set(val_classes))
        extra = sorted(set(val_classes) - set(train_classes))
        raise DatasetMissing(
            f"{name}: {root / 'val'} does not have the class folders of {root / 'train'} "
            f"({_few('missing in val', missing)}{'; ' if missing and extra else ''}{_few('only in val', extra)}). "
            f"Both must hold one folder per class, the same classes, named alike; the layout is {LAYOUT}.")

    def split(part: str, train: bool) -> FolderSplit:
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

        folder = root / part
        try:
            samples = make_dataset(str(folder), {c: i for i, c in enumerate(train_classes)}, IMG_EXTENSIONS)
        except FileNotFoundError as err:  # a class folder without images
            raise DatasetMissing(f"{name}: {err} (in {folder}). Every class folder must hold images; "
                                 f"the layout is {LAYOUT}.") from None
        prefix = len(str(folder)) + 1
        paths = np.array([os.fsencode(p[prefix:]) for p, _ in samples])
        targets = torch.tensor([t for _, t in samples], dtype=torch.long)
        return FolderSplit(folder, paths, targets, train_classes, image_size, resize, augment, train, options)

    return split("train", True), split("val", False)


def _classes(root: Path, part: str, name: str) -> list[str]:
    folder = root / part
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir()) if folder.is_dir() else []
    if not classes:
        where = f"{folder} does not exist" if not folder.exists() else f"{folder} has no class folders"
        raise DatasetMissing(
            f"{name} is not in {root}: {where}. The images are read from {LAYOUT}; the val folder "
            f"is the test split, and the validation split is held out of train. {name} cannot be "
            f"downloaded automatically: put it there, or set data.root to the folder that holds "
            f"train/ and val/.")
    return classes


def _few(what: str, names: list[str]) -> str:
    return f"{what}: {few_names(names, shown=5)}" if names else ""
