"""The data section of a run's config: which dataset, where, how it is split, and the settings
only some datasets read; and its checks, which train, eval and export share."""

from __future__ import annotations

from typing import Any
from dataclasses import dataclass

from sensreg.checks import Problems, is_int, memory_bytes, only, registered, type_problems
from sensreg.data.registry import DATASETS


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = "data"  # where the dataset lives: each data/NAME.yaml says its layout
    val_fraction: float = 0.1  # held out from the training set for threshold and model selection
    split_seed: int = 0  # fixes the train/validation split, the same for every training seed
    on_device: bool = True  # hold the whole dataset on the training device as tensors
    eval_batch_size: int = 1000
    # random crop of the image zero-padded (black) by 4 pixels and horizontal flip, of training
    # batches only; the CIFAR configs turn it on
    augment: bool = only("cifar10", "cifar100", "imagenet", default=False)
    # synthetic only: class prototypes plus noise (data/synthetic.yaml)
    num_train: int = only("synthetic", default=1024)
    num_test: int = only("synthetic", default=512)
    num_classes: int = only("synthetic", default=10)
    noise: float = only("synthetic", default=1.0)
    shape: list[int] = only("synthetic", default_factory=lambda: [1, 28, 28])  # of one image: C, H, W
    # imagenet only (read from image files): the training crop's and the evaluation crop's
    # side, and the side the shorter edge is resized to before the evaluation crop
    image_size: int = only("imagenet", default=224)
    resize: int = only("imagenet", default=256)
    # imagenet only: DataLoader worker processes that decode the images, pinned host memory
    # for the copies to a GPU, workers kept alive between passes, batches loaded ahead per worker
    num_workers: int = only("imagenet", default=8)
    pin_memory: bool = only("imagenet", default=True)
    persistent_workers: bool = only("imagenet", default=True)
    prefetch_factor: int = only("imagenet", default=2)

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments of the dataset loader beyond name and root."""
        if self.name == "synthetic":
            return {"num_train": self.num_train, "num_test": self.num_test,
                    "num_classes": self.num_classes, "noise": self.noise, "shape": tuple(self.shape)}
        if registered(self.name, DATASETS) and DATASETS[self.name].from_files:
            return {"image_size": self.image_size, "resize": self.resize, "augment": self.augment,
                    "num_workers": self.num_workers, "pin_memory": self.pin_memory,
                    "persistent_workers": self.persistent_workers, "prefetch_factor": self.prefetch_factor}
        return {}



def check_data(data: DataConfig, p: Problems) -> None:
    """The checks of the data section (train, and the data.* overrides of eval and export)."""
    if data.name != "synthetic" and not (isinstance(data.root, str) and data.root.strip()):
        p.add("data.root",
              f"data.root={data.root!r} must name the folder where the dataset lives (e.g. data.root=data).")
    if not (isinstance(data.val_fraction, (int, float)) and 0 < data.val_fraction < 1):
        p.add("data.val_fraction",
              f"data.val_fraction={data.val_fraction!r} must lie strictly between 0 and 1.")
    p.at_least("data.eval_batch_size", data.eval_batch_size, 1)
    # torch.Generator takes seeds from -2^63 to 2^64 - 1 (data/registry.py: split_train_val)
    if is_int(data.split_seed) and not -(2**63) <= data.split_seed < 2**64:
        p.add("data.split_seed",
              f"data.split_seed={data.split_seed} is outside the seeds PyTorch takes: use an "
              f"integer from {-(2**63)} to {2**64 - 1}.")
    if data.name == "synthetic":
        p.at_least("data.num_train", data.num_train, 2)  # a training and a validation sample
        p.at_least("data.num_test", data.num_test, 1)
        p.at_least("data.num_classes", data.num_classes, 2)
        p.at_least("data.noise", data.noise, 0)
        if not (isinstance(data.shape, (list, tuple)) and len(data.shape) == 3
                and all(is_int(v) and v >= 1 for v in data.shape)):
            p.add("data.shape",
                  f"data.shape={data.shape!r} must be three positive integers, channels, height "
                  f"and width of one image, e.g. [1,28,28] (like MNIST) or [3,32,32] (like CIFAR).")
        elif not p:
            _check_synthetic_size(data, p)
    if registered(data.name, DATASETS) and DATASETS[data.name].from_files:
        if data.on_device:
            p.add("data.on_device",
                  f"data.on_device=true cannot hold data.name={data.name}: its images are "
                  f"decoded from files batch by batch, never held on the device as a whole; "
                  f"set data.on_device=false.")
        p.at_least("data.num_workers", data.num_workers, 0)
        p.at_least("data.prefetch_factor", data.prefetch_factor, 1)
        p.at_least("data.image_size", data.image_size, 1)
        if is_int(data.resize) and is_int(data.image_size) \
                and data.resize < data.image_size:
            p.add("data.resize",
                  f"data.resize={data.resize} is smaller than data.image_size={data.image_size}: "
                  f"the evaluation crop would reach past the resized image. Set data.resize >= "
                  f"data.image_size (ImageNet's usual pair: 256 and 224).")


def _check_synthetic_size(data: DataConfig, p: Problems) -> None:
    """The generated images are held in memory whole: more than this machine has would end
    the run in an out-of-memory kill instead of a message."""
    c, h, w = data.shape
    # the images, and one prototype image per class (data/tensors.py: load_synthetic), float32
    need = (data.num_train + data.num_test + data.num_classes) * c * h * w * 4
    have = memory_bytes()
    if have and need > have:
        p.add("data.num_train",
              f"data.num_train={data.num_train} and data.num_test={data.num_test} images of "
              f"data.shape={list(data.shape)} in data.num_classes={data.num_classes} classes "
              f"need {need / 2**30:.3g} GiB of memory, more than this machine's {have / 2**30:.3g} GiB; "
              f"generate fewer or smaller images, or fewer classes.")


def data_problems(data: DataConfig) -> list[str]:
    """Every invalid value of a data section on its own (as train checks it), one sentence each."""
    p = Problems()
    typed = type_problems("data", data)
    p += [message for _, message in typed]
    if not typed:
        check_data(data, p)
    return list(p)

