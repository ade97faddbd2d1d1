"""Datasets: the fixed split, device-resident batching, the torchvision loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sensreg.data import DatasetMissing, Split, batches, load_dataset, num_batches, split_train_val

REPO = Path(__file__).resolve().parents[1]
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
@pytest.mark.skipif(not (REPO / "data" / "MNIST" / "raw").is_dir(), reason="MNIST not in data/ (see README)")
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
