"""CIFAR-10/100: loading the on-disk format, the training augmentation, a short run on them.

CIFAR is not available on these machines, so the tests write tiny datasets in the published
format: Python 2 pickles (the originals were written by Python 2's cPickle) of dicts with byte
string keys, ``data`` a uint8 array (N, 3072) of RGB planes, labels as lists of ints.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar

from sensreg.records.checkpoint import load_checkpoint
from sensreg.run.config import TrainConfig
from sensreg.data import DatasetMissing, load_dataset, pad_value, random_crop_flip
from sensreg.run.interrupt import Interrupted
from sensreg.models import build_model
from sensreg.run.lifecycle import resume_state, train
from sensreg.records.train_state import load_training_state

from conftest import composed, stop_at_step

# The normalization constants written out here, independently of sensreg.data.
STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
         "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
CLASSES = {"cifar10": 10, "cifar100": 100}


# --- writing CIFAR in its published format -------------------------------------------------------

class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING), as the original files do;
    Python 3 reads those back as ``str`` under ``encoding="latin1"``, which is how torchvision
    loads them (a plain Python 3 pickle of b"data" would read back as bytes, not "data")."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def dump(path: Path, obj: dict) -> str:
    """Write ``obj`` as a Python 2 pickle; return the file's md5."""
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)
    return hashlib.md5(path.read_bytes()).hexdigest()


def images(n: int, classes: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n).tolist()


def write_cifar(root: Path, name: str, n_train: int = 60, n_test: int = 20, seed: int = 0):
    """A tiny CIFAR-10/100 under ``root`` in torchvision's layout.

    Returns the md5 sums of its files and the raw images and labels:
    ((train uint8 (N, 3, 32, 32), train labels), (test images, test labels)).
    """
    x_train, y_train = images(n_train, CLASSES[name], seed)
    x_test, y_test = images(n_test, CLASSES[name], seed + 1)
    md5 = {}
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        parts = np.array_split(np.arange(n_train), 5)
        for i, part in enumerate(parts, start=1):
            md5[f"data_batch_{i}"] = dump(folder / f"data_batch_{i}", {
                b"batch_label": f"training batch {i} of 5".encode(), b"labels": [y_train[j] for j in part],
                b"data": x_train[part], b"filenames": [f"img_{j}.png".encode() for j in part]})
        md5["test_batch"] = dump(folder / "test_batch", {
            b"batch_label": b"testing batch 1 of 1", b"labels": y_test, b"data": x_test,
            b"filenames": [f"test_{j}.png".encode() for j in range(n_test)]})
        md5["batches.meta"] = dump(folder / "batches.meta", {
            b"num_cases_per_batch": 10000, b"num_vis": 3072,
            b"label_names": [f"class{k}".encode() for k in range(10)]})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            md5[split] = dump(folder / split, {
                b"batch_label": f"{split} batch".encode(), b"fine_labels": y,
                b"coarse_labels": [k // 5 for k in y], b"data": x,
                b"filenames": [f"{split}_{j}.png".encode() for j in range(len(y))]})
        md5["meta"] = dump(folder / "meta", {
            b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]})
    as_tensor = lambda x: torch.from_numpy(x).reshape(-1, 3, 32, 32)  # noqa: E731
    return md5, (as_tensor(x_train), torch.tensor(y_train)), (as_tensor(x_test), torch.tensor(y_test))


def register_checksums(monkeypatch, name: str, md5: dict[str, str]) -> None:
    """Make torchvision's CIFAR class expect these files' md5 sums instead of the published ones:
    its integrity check stays on and in force, for the generated files."""
    cls = tv_cifar.CIFAR10 if name == "cifar10" else tv_cifar.CIFAR100
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5[f]] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})


def make_cifar(root: Path, name: str, monkeypatch, **sizes):
    md5, train, test = write_cifar(root, name, **sizes)
    register_checksums(monkeypatch, name, md5)
    return train, test


@pytest.fixture(autouse=True)
def downloads(monkeypatch) -> list[str]:
    """No test here touches the network: a download fails as it does offline, and is recorded."""
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise URLError("offline (test)")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    return calls


def normalize(raw: torch.Tensor, name: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in STATS[name])
    return (raw.float() / 255 - mean) / std


# --- loading -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_generated_files_load_normalized_split_and_paired_with_their_labels(tmp_path, monkeypatch, downloads, name):
    (x_train, y_train), (x_test, y_test) = make_cifar(tmp_path, name, monkeypatch)
    d = load_dataset(name, tmp_path, val_fraction=0.1, split_seed=3)
    assert not downloads  # the files are there: nothing is fetched
    assert d.input_shape == (3, 32, 32) and d.num_classes == CLASSES[name]
    assert (len(d.train), len(d.val), len(d.test)) == (54, 6, 20)
    for split in (d.train, d.val, d.test):
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (3, 32, 32) and split.y.dtype == torch.long
    # The test split in file order; train and validation as split_seed draws them, images with
    # their own labels.
    assert torch.allclose(d.test.x, normalize(x_test, name), atol=1e-6) and torch.equal(d.test.y, y_test)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(3))
    for split, idx in ((d.val, perm[:6]), (d.train, perm[6:])):
        assert torch.allclose(split.x, normalize(x_train[idx], name), atol=1e-6)
        assert torch.equal(split.y, y_train[idx])


def test_padding_value_is_a_black_pixel_after_normalization():
    # The constants are the training set's pixel statistics: a black pixel is -mean/std.
    for name, (mean, std) in STATS.items():
        assert pad_value(name) == pytest.approx([-m / s for m, s in zip(mean, std)])


def test_files_that_do_not_match_the_published_checksums_are_refused_and_kept(tmp_path, downloads):
    write_cifar(tmp_path, "cifar10")  # checksums not registered: these are not the published files
    before = {p: p.read_bytes() for p in (tmp_path / "cifar-10-batches-py").iterdir()}
    with pytest.raises(DatasetMissing, match=r"do not match the md5 sums.*data_batch_1.*test_batch.*batches.meta"):
        load_dataset("cifar10", tmp_path)
    assert not downloads  # not downloaded over the user's files
    assert {p: p.read_bytes() for p in (tmp_path / "cifar-10-batches-py").iterdir()} == before


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_cifar_is_downloaded_and_offline_names_the_folder_leaving_nothing(tmp_path, downloads, name, folder):
    root = tmp_path / "data"
    with pytest.raises(DatasetMissing, match=f"not in {root / folder} and could not be downloaded"):
        load_dataset(name, root)
    assert len(downloads) == 1 and downloads[0].startswith("https://www.cs.toronto.edu/")
    assert list(tmp_path.iterdir()) == []


# --- augmentation --------------------------------------------------------------------------------

def reference_crop_flip(x: torch.Tensor, seed: int, fill):
    """Image by image: pad by 4 with ``fill``, crop 32x32 at the drawn offset, flip if drawn.
    Draws as random_crop_flip documents: all row offsets, all column offsets, all flips.
    Returns the images and the draws."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape
    top, left = torch.randint(0, 9, (n,), generator=g), torch.randint(0, 9, (n,), generator=g)
    flip = torch.randint(0, 2, (n,), generator=g)
    out = []
    for i in range(n):
        padded = torch.tensor(fill, dtype=x.dtype).view(-1, 1, 1).repeat(1, h + 8, w + 8)
        padded[:, 4:4 + h, 4:4 + w] = x[i]
        crop = padded[:, top[i]:top[i] + h, left[i]:left[i] + w]
        out.append(crop.flip(2) if flip[i] else crop)
    return torch.stack(out), (top, left, flip)


def test_crop_and_flip_match_a_per_image_reference_and_keep_shape():
    x = torch.randn(64, 3, 32, 32)
    kept = x.clone()
    fill = pad_value("cifar10")
    out = random_crop_flip(x, torch.Generator().manual_seed(5), fill=fill)
    assert out.shape == x.shape and out.dtype == x.dtype
    expected, (top, left, flip) = reference_crop_flip(x, 5, fill)
    assert torch.equal(out, expected)
    assert torch.equal(x, kept)  # the split's own tensor is never changed
    # The draws that reproduce it do crop and flip: about half the images mirrored, offsets
    # over the whole range, padding in view.
    assert 16 < int(flip.sum()) < 48 and set(top.tolist()) == set(left.tolist()) == set(range(9))
    assert (out == torch.tensor(fill).view(1, 3, 1, 1)).all(dim=1).any()


def test_crop_and_flip_are_reproducible_from_the_seed_alone():
    x = torch.randn(16, 3, 32, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(1)
    first, second = random_crop_flip(x, g), random_crop_flip(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # a stream, not one draw repeated


# --- config and training -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_configs_validate_with_cifar_models_and_turn_augmentation_on(name):
    for model in ("resnet20", "resnet56", "vgg16_cifar", "lenet300", "lenet5"):
        cfg = TrainConfig.from_dict(composed(f"data={name}", f"model={model}"))
        assert cfg.data.name == name and cfg.data.augment is True
    assert TrainConfig.from_dict(composed()).data.augment is False  # MNIST as before
    # The LeNets size their first fully connected layer to CIFAR's inputs.
    assert build_model("lenet300", CLASSES[name], (3, 32, 32)).fc1.in_features == 3 * 32 * 32
    assert build_model("lenet5", CLASSES[name], (3, 32, 32)).fc1.in_features == 50 * 5 * 5


def cifar_config(root: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.from_dict(composed(
        "~experiment", "data=cifar10", f"data.root={root}", "model=resnet20", "trainer.epochs=1", "trainer.batch_size=8",
        "trainer.device=cpu", "trainer.progress=false", "data.eval_batch_size=16", *overrides))


def test_a_short_run_trains_on_cifar_augmenting_training_batches_only(tmp_path, monkeypatch):
    make_cifar(tmp_path / "data", "cifar10", monkeypatch, n_train=40, n_test=16)
    d = load_dataset("cifar10", tmp_path / "data")
    import sensreg.run.evaluate as evaluate_module
    import sensreg.run.loop as train_module

    augmented, evaluated = [], []
    real_augment, real_evaluate = train_module.crop_flip, evaluate_module.evaluate

    def augment_spy(x, draws, **kwargs):
        # Every augmented image is a training image, never one of validation or test.
        matches = (x.reshape(len(x), 1, -1) == d.train.x.reshape(1, len(d.train), -1)).all(dim=2)
        assert matches.any(dim=1).all()
        augmented.append(len(x))
        return real_augment(x, draws, **kwargs)

    def evaluate_spy(model, split, *args, **kwargs):
        evaluated.append(split)
        return real_evaluate(model, split, *args, **kwargs)

    monkeypatch.setattr(train_module, "crop_flip", augment_spy)
    monkeypatch.setattr(evaluate_module, "evaluate", evaluate_spy)
    summary = train(cifar_config(tmp_path / "data"), tmp_path / "run")
    assert summary["status"] == "completed" and summary["model"] == "resnet20"
    assert augmented == [8, 8, 8, 8, 4]  # 36 training images in batches of 8
    for split in evaluated:  # validation and test reach the model as loaded, unaugmented
        assert any(torch.equal(split.x, s.x) for s in (d.val, d.test))
    assert {len(s) for s in evaluated} == {4, 16}
    assert load_checkpoint(tmp_path / "run" / "model.pt")["input_shape"] == [3, 32, 32]


def test_a_resumed_run_continues_the_augmentation_stream(tmp_path, monkeypatch):
    make_cifar(tmp_path / "data", "cifar10", monkeypatch, n_train=40, n_test=16)
    cfg = cifar_config(tmp_path / "data", "model=lenet300", "trainer.epochs=2", "trainer.deterministic=true")
    train(cfg, tmp_path / "full")

    stop_at_step(monkeypatch, 7)  # in the middle of epoch 2 (5 steps an epoch)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "cut")
    assert load_training_state(tmp_path / "cut" / "last.pt")["augment_generator"] is not None
    train(cfg, tmp_path / "cut", resume_state(cfg, tmp_path / "cut" / "last.pt"))
    full, cut = (load_checkpoint(tmp_path / run / "model.pt")["state_dict"] for run in ("full", "cut"))
    for name, tensor in full.items():
        assert torch.equal(tensor, cut[name]), name
