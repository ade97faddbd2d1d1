"""The checks of the data.* settings that only some datasets read, each dataset's own
(``DatasetSpec.check`` in ``registry.py``); the keys every dataset reads are checked in
``config.py``."""

from __future__ import annotations

from typing import Any

from sensreg.checks import Problems, is_int, memory_bytes


def check_synthetic(data: Any, p: Problems) -> None:
    """The generated dataset's size, classes, noise and image shape."""
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


def _check_synthetic_size(data: Any, p: Problems) -> None:
    """The generated images are held in memory whole: more than this machine has would end
    the run in an out-of-memory kill instead of a message."""
    c, h, w = data.shape
    # the images, and one prototype image per class (tensors.py: load_synthetic), float32
    need = (data.num_train + data.num_test + data.num_classes) * c * h * w * 4
    have = memory_bytes()
    if have and need > have:
        p.add("data.num_train",
              f"data.num_train={data.num_train} and data.num_test={data.num_test} images of "
              f"data.shape={list(data.shape)} in data.num_classes={data.num_classes} classes "
              f"need {need / 2**30:.3g} GiB of memory, more than this machine's {have / 2**30:.3g} GiB; "
              f"generate fewer or smaller images, or fewer classes.")


def check_image_files(data: Any, p: Problems) -> None:
    """A dataset decoded from image files batch by batch (ImageNet): its loader's workers and
    its crops."""
    if data.on_device:
        p.add("data.on_device",
              f"data.on_device=true cannot hold data.name={data.name}: its images are "
              f"decoded from files batch by batch, never held on the device as a whole; "
              f"set data.on_device=false.")
    p.at_least("data.num_workers", data.num_workers, 0)
    p.at_least("data.prefetch_factor", data.prefetch_factor, 1)
    p.at_least("data.image_size", data.image_size, 1)
    if is_int(data.resize) and is_int(data.image_size) and data.resize < data.image_size:
        p.add("data.resize",
              f"data.resize={data.resize} is smaller than data.image_size={data.image_size}: "
              f"the evaluation crop would reach past the resized image. Set data.resize >= "
              f"data.image_size (ImageNet's usual pair: 256 and 224).")
