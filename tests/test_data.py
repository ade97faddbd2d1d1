"""Datasets: the fixed split, device-resident batching, the torchvision loaders."""

from __future__ import annotations

from dataclasses import fields
from importlib import resources
from pathlib import Path

import pytest
import torch

from sensreg.data.config import DataConfig
from sensreg.run.config import TrainConfig
from sensreg.data import (DATASETS, DatasetMissing, Split, batches, input_shape, load_dataset, num_batches,
                          pad_value, split_train_val)

from conftest import REPO, composed, needs_mnist

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_split_depends_on_split_seed_only_and_partitions_the_training_set():
    train = Split(torch.arange(100.0)[:, None], torch.arange(100))
    a_train, a_val = split_train_val(train, 0.1, split_seed=0)
    b_train, b_val = split_train_val(train, 0.1, split_seed=0)
    c_train, c_val = split_train_val(train, 0.1, split_seed=1)
    assert torch.equal(a_val.y, b_val.y) and not torch.equal(a_val.y, c_val.y)
    assert len(a_val) == 10 and len(a_train) == 90
    assert sorted(torch.cat([a_train.y, a_val.y]).tolist()) == list(range(100))


def test_batches_cover_every_sample_once_per_epoch_in_a_seeded_order():
    split = Split(torch.arange(23.0)[:, None], torch.arange(23))
    first = [y for _, y in batches(split, 5, shuffle=True, generator=torch.Generator().manual_seed(3))]
    again = [y for _, y in batches(split, 5, shuffle=True, generator=torch.Generator().manual_seed(3))]
    assert [len(y) for y in first] == [5, 5, 5, 5, 3] and num_batches(split, 5) == 5
    assert sorted(torch.cat(first).tolist()) == list(range(23))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(torch.cat(first), torch.arange(23))
    for x, y in batches(split, 5, shuffle=True, generator=torch.Generator().manual_seed(4)):
        assert torch.equal(x[:, 0].long(), y)  # inputs and labels stay paired


def test_synthetic_dataset_is_fixed_and_shaped_like_mnist():
    a = load_dataset("synthetic", num_train=200, num_test=50)
    b = load_dataset("synthetic", num_train=200, num_test=50)
    assert a.input_shape == (1, 28, 28) and a.num_classes == 10
    assert (len(a.train), len(a.val), len(a.test)) == (180, 20, 50)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


def test_synthetic_dataset_can_be_shaped_like_cifar():
    d = load_dataset("synthetic", num_train=200, num_test=50, shape=(3, 32, 32))
    assert d.input_shape == (3, 32, 32) and d.train.x.shape == (180, 3, 32, 32)
    # Each class has its own prototype: the class means differ far more than noise / sqrt(n).
    means = torch.stack([d.train.x[d.train.y == k].mean(dim=0) for k in range(2)])
    assert (means[0] - means[1]).abs().mean() > 0.3
    # The channels are not copies of one another.
    assert not torch.equal(d.train.x[:, 0], d.train.x[:, 1])


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(KeyError, match="mnist.*fashion_mnist.*synthetic"):
        load_dataset("cifar7")


def test_missing_mnist_names_the_folder_and_leaves_no_empty_one(tmp_path):
    with pytest.raises(DatasetMissing, match=str(tmp_path / "MNIST" / "raw")):
        load_dataset("mnist", tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@needs_mnist
def test_mnist_split_sizes_and_normalization():
    d = load_dataset("mnist", REPO / "data")
    assert (len(d.train), len(d.val), len(d.test)) == (54_000, 6_000, 10_000)
    assert d.num_classes == 10 and d.input_shape == (1, 28, 28)
    everything = torch.cat([d.train.x, d.val.x])
    assert abs(float(everything.mean())) < 1e-3 and abs(float(everything.std()) - 1.0) < 1e-3


@pytest.mark.slow
@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_is_taken_from_debian_into_the_data_root(tmp_path):
    d = load_dataset("fashion_mnist", tmp_path)
    assert (len(d.train) + len(d.val), len(d.test)) == (60_000, 10_000)
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()


# --- every registered dataset ----------------------------------------------------------------------

# The keys that every data option has (the dataset's own options come on top of them).
COMMON_DATA_KEYS = {"name", "root", "val_fraction", "split_seed", "on_device", "eval_batch_size"}


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_has_a_config_that_agrees_with_its_spec(name):
    spec = DATASETS[name]
    assert spec.name == name
    path = resources.files("sensreg.configs") / "data" / f"{name}.yaml"
    assert path.is_file(), f"configs/data/{name}.yaml is missing"
    values = composed("~experiment", f"data={name}")["data"]
    assert values["name"] == name
    keys = {f.name for f in fields(DataConfig)}
    assert COMMON_DATA_KEYS <= set(values) <= keys, (sorted(COMMON_DATA_KEYS - set(values)), sorted(set(values) - keys))
    cfg = TrainConfig.from_dict(composed(f"data={name}"))
    assert cfg.data.name == name
    # One input's shape: the spec's own, or the one the config's options choose.
    if spec.input_shape is not None:
        assert len(spec.input_shape) == 3
        assert input_shape(name) == input_shape(name, 7, (2, 5, 5)) == spec.input_shape  # options do not change it
    elif spec.from_files:  # decoded as RGB, cropped to image_size
        assert input_shape(name, cfg.data.image_size) == (3, cfg.data.image_size, cfg.data.image_size)
    else:  # the synthetic dataset's shape option
        assert input_shape(name, synthetic_shape=cfg.data.shape) == tuple(cfg.data.shape)
    # A black pixel after the normalization pads the random crops.
    if spec.normalization is None:
        assert pad_value(name) == (0.0,)
    else:
        mean, std = spec.normalization
        assert len(mean) == len(std) == input_shape(name)[0]
        assert pad_value(name) == pytest.approx(tuple(-m / s for m, s in zip(mean, std)))


# The datasets whose tests write them in their own format (none of them is on these machines).
GENERATED_ELSEWHERE = {"cifar10": "tests/test_data_cifar.py", "cifar100": "tests/test_data_cifar.py",
                       "imagenet": "tests/test_data_imagenet.py"}
LOADED_HERE = ["synthetic",
               pytest.param("mnist", marks=[pytest.mark.slow, needs_mnist]),
               pytest.param("fashion_mnist", marks=[pytest.mark.slow, pytest.mark.skipif(
                   not DEBIAN_FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")])]


def test_every_dataset_is_loaded_by_a_test():
    here = {getattr(p, "values", (p,))[0] for p in LOADED_HERE}
    missing = set(DATASETS) - here - set(GENERATED_ELSEWHERE)
    assert not missing, (f"no test loads the dataset(s) {sorted(missing)} of DATASETS: add them to LOADED_HERE "
                         f"(tests/test_data.py) or write them in their format in a test of their own")
    assert here | set(GENERATED_ELSEWHERE) <= set(DATASETS)


@pytest.mark.parametrize("name", LOADED_HERE)
def test_a_dataset_loads_with_the_shape_and_classes_of_its_spec(name, tmp_path):
    spec = DATASETS[name]
    # MNIST from data/; Fashion-MNIST copied from Debian's files into the (empty) root.
    root = REPO / "data" if name == "mnist" else tmp_path
    options = {"num_train": 200, "num_test": 50} if name == "synthetic" else {}
    d = load_dataset(name, root, val_fraction=0.1, **options)
    shape = input_shape(name)  # the synthetic dataset: its default shape
    assert d.input_shape == shape
    for split in (d.train, d.val, d.test):
        assert len(split) > 0 and tuple(split.x.shape[1:]) == shape and split.x.dtype == torch.float32
        assert split.y.dtype == torch.long and 0 <= int(split.y.min()) and int(split.y.max()) < d.num_classes
    assert len(d.val) == round(0.1 * (len(d.train) + len(d.val)))
    if spec.num_classes is not None:
        assert d.num_classes == spec.num_classes
    assert d.pad_value == pad_value(name) and not d.augmented_in_loader
