"""The data section of a run's config: which dataset, where, how it is split, and the settings
only some datasets read; and its checks (those of the keys every dataset reads here, each
dataset's own in ``dataset_checks.py``), which train, eval and export share."""

from __future__ import annotations

from typing import Any
from dataclasses import dataclass, field

from sensreg.checks import Problems, is_int, registered, type_problems
from sensreg.data.registry import DATASETS


@dataclass
class DataConfig:
    """The data.* settings and their defaults. Every dataset reads the first six; the others
    only the datasets that name them (``DatasetSpec.own_keys``), whose options hold them."""

    name: str = "mnist"
    root: str = "data"  # where the dataset lives: each data/NAME.yaml says its layout
    val_fraction: float = 0.1  # held out from the training set for threshold and model selection
    split_seed: int = 0  # fixes the train/validation split, the same for every training seed
    on_device: bool = True  # hold the whole dataset on the training device as tensors
    eval_batch_size: int = 1000
    # random crop of the image zero-padded (black) by 4 pixels and horizontal flip, of training
    # batches only; the CIFAR configs turn it on
    augment: bool = False
    # synthetic only: class prototypes plus noise (data/synthetic.yaml)
    num_train: int = 1024
    num_test: int = 512
    num_classes: int = 10
    noise: float = 1.0
    shape: list[int] = field(default_factory=lambda: [1, 28, 28])  # of one image: C, H, W
    # imagenet only (read from image files): the training crop's and the evaluation crop's
    # side, and the side the shorter edge is resized to before the evaluation crop
    image_size: int = 224
    resize: int = 256
    # imagenet only: DataLoader worker processes that decode the images, pinned host memory
    # for the copies to a GPU, workers kept alive between passes, batches loaded ahead per worker
    num_workers: int = 8
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2

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
    if registered(data.name, DATASETS) and DATASETS[data.name].check is not None:
        DATASETS[data.name].check(data, p)


def data_problems(data: DataConfig) -> list[str]:
    """Every invalid value of a data section on its own (as train checks it), one sentence each."""
    p = Problems()
    typed = type_problems("data", data)
    p += [message for _, message in typed]
    if not typed:
        check_data(data, p)
    return list(p)

