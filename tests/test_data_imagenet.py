"""ImageNet: the ImageFolder layout, its transforms, batching through DataLoader workers, a run.

ImageNet is not available on these machines, so the tests write tiny trees in its on-disk
format: ``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*.JPEG``, real JPEG files
(3 classes; 8 training and 3 validation images each, 40 x 30 pixels, each of its own colours).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sensreg.commands.cli import main as sensreg_main
from sensreg.data.config import DataConfig
from sensreg.run.config import ConfigError, TrainConfig
from sensreg.data import DatasetMissing, Split, batches, load_dataset, load_test_split
from sensreg.run.interrupt import Interrupted
from sensreg.run.lifecycle import resume_state, train
from sensreg.run.loop import TrainStep

from conftest import composed

CLASSES = ["n01", "n02", "n03"]  # sorted, as ImageFolder numbers them
# torchvision's ImageNet normalization, written out here independently of sensreg.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SMALL = {"image_size": 16, "resize": 20}


def picture(k: int, i: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    """Class ``k``'s ``i``-th image: a base colour per class, a horizontal ramp in the next
    channel and a vertical one, steeper for each image, in the third (so no two are alike and
    resizing and cropping change the values)."""
    w, h = size
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[..., k] = 60 + 60 * k
    a[..., (k + 1) % 3] = (np.arange(w) * 255 // (w - 1))[None, :]
    a[..., (k + 2) % 3] = (np.arange(h) * (3 + i) % 256)[:, None]
    return Image.fromarray(a)


def write_imagenet(root: Path, n_train: int = 8, n_val: int = 3, classes=CLASSES, val_classes=None) -> Path:
    for part, n, names in (("train", n_train, classes), ("val", n_val, val_classes or classes)):
        for k, name in enumerate(names):
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(n):
                picture(k, i + (100 if part == "val" else 0)).save(folder / f"{name}_{i:04d}.JPEG", quality=90)
    return root


@pytest.fixture
def root(tmp_path) -> Path:
    return write_imagenet(tmp_path / "imagenet")


def load(root: Path, **options):
    options = {"val_fraction": 0.25, "split_seed": 3, "num_workers": 0, **SMALL, **options}
    return load_dataset("imagenet", root, **options)


def expected_eval_image(path: Path, image_size: int, resize: int) -> torch.Tensor:
    """The evaluation transform done by hand with PIL: shorter side to ``resize`` (bilinear),
    the central ``image_size`` square, scaled to [0, 1] and normalized."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    new_w, new_h = (resize, int(resize * h / w)) if w < h else (int(resize * w / h), resize)
    image = image.resize((new_w, new_h), Image.BILINEAR)
    top, left = round((new_h - image_size) / 2), round((new_w - image_size) / 2)
    a = np.asarray(image.crop((left, top, left + image_size, top + image_size)), dtype=np.float32) / 255
    return ((torch.from_numpy(a) - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)


def all_batches(split, batch_size: int, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(batches(split, batch_size, **kwargs))


# --- the folder and its splits -------------------------------------------------------------------

def test_train_folder_is_split_into_training_and_validation_and_val_folder_is_the_test_split(root):
    d = load(root)
    assert d.num_classes == 3 and d.input_shape == (3, 16, 16) and d.augmented_in_loader
    assert (len(d.train), len(d.val), len(d.test)) == (18, 6, 9)  # 25 % of 24 held out
    assert d.train.classes == d.test.classes == CLASSES
    # The held-out images are those split_seed picks of the train folder (in ImageFolder's
    # sorted order), with their own labels; the test split is the val folder in order.
    files = sorted((root / "train").glob("*/*.JPEG"))
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(3))
    for split, idx in ((d.val, perm[:6]), (d.train, perm[6:])):
        assert [split.folder / p.decode() for p in split.paths] == [files[i] for i in idx]
        assert split.targets.tolist() == [CLASSES.index(files[i].parent.name) for i in idx]
    assert [d.test.folder / p.decode() for p in d.test.paths] == sorted((root / "val").glob("*/*.JPEG"))
    assert d.test.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Training images take the training transform, validation and test images the evaluation one.
    assert (d.train.train, d.val.train, d.test.train) == (True, False, False)
    # The split depends on split_seed alone.
    assert load(root, split_seed=3).val.paths.tolist() == d.val.paths.tolist()
    assert load(root, split_seed=4).val.paths.tolist() != d.val.paths.tolist()
    assert len(load(root, val_fraction=0.1).val) == 2  # round(2.4)


def test_evaluation_images_are_resized_centre_cropped_and_normalized_exactly(root):
    d = load(root)
    x, y = torch.cat([x for x, _ in batches(d.test, 4)]), torch.cat([y for _, y in batches(d.test, 4)])
    assert x.shape == (9, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.long
    files = sorted((root / "val").glob("*/*.JPEG"))
    for i in (0, 4, 8):
        assert torch.allclose(x[i], expected_eval_image(files[i], 16, 20), atol=1e-5), files[i]
    # Another crop pair: the sizes come from the config.
    big = load(root, image_size=24, resize=28)
    x24 = next(iter(batches(big.test, 9)))[0]
    assert x24.shape == (9, 3, 24, 24)
    assert torch.allclose(x24[5], expected_eval_image(files[5], 24, 28), atol=1e-5)


def test_training_images_are_randomly_cropped_and_flipped(root):
    d = load(root, image_size=24, resize=28)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    first = all_batches(d.train, 6, shuffle=True, generator=g())
    second = all_batches(d.train, 6, shuffle=True, generator=g())
    for (x1, y1), (x2, y2) in zip(first, second):
        assert x1.shape == (len(y1), 3, 24, 24) and torch.equal(y1, y2)  # same order and labels
    # New random crops every pass, and not the evaluation crop.
    assert not torch.equal(first[0][0], second[0][0])
    plain = load(root, image_size=24, resize=28, augment=False)
    assert not torch.equal(first[0][0], all_batches(plain.train, 6, shuffle=True, generator=g())[0][0])


# --- batching ------------------------------------------------------------------------------------

def reference_split(d) -> Split:
    """The training split decoded once (evaluation transform) as a tensor split, to batch the
    device-resident way."""
    x, y = zip(*batches(d.train, 5))
    return Split(torch.cat(x), torch.cat(y))


@pytest.mark.parametrize("workers", [0, 2])
def test_shuffled_batches_come_in_the_tensor_paths_order_with_start_and_shards(root, workers):
    d = load(root, augment=False, num_workers=workers)
    ref = reference_split(d)
    assert torch.equal(ref.y, d.train.targets)

    def same(kwargs, batch_size=4, seed=7):
        got = all_batches(d.train, batch_size, generator=torch.Generator().manual_seed(seed), **kwargs)
        want = all_batches(ref, batch_size, generator=torch.Generator().manual_seed(seed), **kwargs)
        assert len(got) == len(want) > 0
        for (x, y), (xr, yr) in zip(got, want):
            assert torch.equal(y, yr) and torch.allclose(x, xr, atol=1e-6)
        return got

    full = same({"shuffle": True})
    perm = torch.randperm(18, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.cat([y for _, y in full]), d.train.targets[perm])  # one randperm, in order
    resumed = same({"shuffle": True, "start": 3})  # an epoch continued after its 3rd batch
    assert all(torch.equal(a[1], b[1]) for a, b in zip(resumed, full[3:])) and len(resumed) == len(full) - 3
    parts = [same({"shuffle": True, "shard": (rank, 3)}) for rank in range(3)]
    for b, (x, y) in enumerate(full):  # the three parts of a batch are that batch
        assert torch.equal(torch.cat([p[b][1] for p in parts]), y)
        assert torch.allclose(torch.cat([p[b][0] for p in parts]), x, atol=1e-6)
    same({"shuffle": True, "shard": (1, 2), "start": 2}, batch_size=5)
    same({"shuffle": False, "shard": (0, 2)}, batch_size=5)
    # A batch smaller than the processes leaves some with an empty part, shaped like the others.
    last = all_batches(d.train, 16, shuffle=True, generator=torch.Generator().manual_seed(1), shard=(2, 3))[-1]
    assert last[0].shape == (0, 3, 16, 16) and last[1].shape == (0,)


def test_worker_processes_give_the_same_evaluation_batches_and_persist_across_passes(root):
    inline, workers = load(root), load(root, num_workers=2)
    for split in ("val", "test"):
        a = all_batches(getattr(inline, split), 4)
        b = all_batches(getattr(workers, split), 4)
        assert len(a) == len(b) and all(torch.equal(x, xw) and torch.equal(y, yw) for (x, y), (xw, yw) in zip(a, b))
    # One DataLoader per split, kept: the same worker processes serve the next pass, also after
    # a pass that was abandoned part-way, and each pass takes the order it was given.
    loader = workers.test._loader
    pids = {w.pid for w in loader._iterator._workers}
    it = batches(workers.test, 2)
    next(it)
    it.close()
    again = all_batches(workers.test, 4)
    assert workers.test._loader is loader and {w.pid for w in loader._iterator._workers} == pids
    assert all(torch.equal(x, xa) for (x, _), (xa, _) in zip(b, again))
    for seed in (1, 2):
        got = all_batches(workers.train, 6, shuffle=True, generator=torch.Generator().manual_seed(seed))
        perm = torch.randperm(18, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(torch.cat([y for _, y in got]), workers.train.targets[perm])
    # A second pass over a split while one is under way gets its own loader.
    outer = batches(workers.test, 3)
    first = next(outer)
    assert torch.equal(torch.cat([x for x, _ in batches(workers.test, 3)]), torch.cat([x for x, _ in b]))
    assert torch.equal(torch.cat([first[0], *(x for x, _ in outer)]), torch.cat([x for x, _ in b]))


# --- mistakes ------------------------------------------------------------------------------------

def test_a_missing_folder_names_the_layout_and_that_nothing_is_downloaded(tmp_path):
    with pytest.raises(DatasetMissing, match=r"ImageNet is not in .*nowhere: .*nowhere/train does not exist"
                                             r".*<root>/train/<class>/<image>.JPEG.*cannot be downloaded"):
        load(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    root = write_imagenet(tmp_path / "no_val")
    for f in (root / "val").glob("*/*"):
        f.unlink()
    for d in (root / "val").iterdir():
        d.rmdir()
    with pytest.raises(DatasetMissing, match=r"no_val/val has no class folders"):
        load(root)


def test_val_classes_that_differ_from_train_are_refused(tmp_path):
    root = write_imagenet(tmp_path / "imagenet", val_classes=["n01", "n02", "n04"])
    with pytest.raises(DatasetMissing, match=r"val does not have the class folders of .*train "
                                             r"\(missing in val: n03; only in val: n04\)"):
        load(root)


def test_a_class_folder_without_images_is_refused(root):
    for f in (root / "train" / "n02").iterdir():
        f.unlink()
    with pytest.raises(DatasetMissing, match=r"Found no valid file for the classes n02"):
        load(root)


def test_imagenet_config_validates_and_refuses_what_cannot_work():
    for model in ("resnet18", "resnet50", "resnet101", "vgg16"):
        cfg = TrainConfig.from_dict(composed("data=imagenet", f"model={model}"))
        assert cfg.data.name == "imagenet" and not cfg.data.on_device and cfg.data.augment
    with pytest.raises(ConfigError, match=r"data.on_device=true cannot hold data.name=imagenet.*"
                                          r"set data.on_device=false"):
        TrainConfig.from_dict(composed("data=imagenet", "data.on_device=true"))
    with pytest.raises(ConfigError, match=r"data.resize=200 is smaller than data.image_size=224"):
        TrainConfig.from_dict(composed("data=imagenet", "data.resize=200"))
    with pytest.raises(ConfigError, match=r"data.num_workers=-1 must be a number >= 0"):
        TrainConfig.from_dict(composed("data=imagenet", "data.num_workers=-1"))
    # The model check sees the configured crop: VGG-16's five poolings need 32 pixels.
    with pytest.raises(ConfigError, match=r"model.name=vgg16 cannot train on data.name=imagenet \(inputs 3x16x16\)"):
        TrainConfig.from_dict(composed("data=imagenet", "model=vgg16", "data.image_size=16", "data.resize=20"))
    TrainConfig.from_dict(composed("data=imagenet", "model=vgg16", "data.image_size=32", "data.resize=36"))


def test_imagenet_yaml_and_dataclass_agree_and_loader_keys_do_not_change_the_hash():
    raw = composed("data=imagenet")["data"]
    defaults = DataConfig()
    for key in ("image_size", "resize", "num_workers", "pin_memory", "persistent_workers", "prefetch_factor"):
        assert raw[key] == getattr(defaults, key), key
    base = TrainConfig.from_dict(composed("data=imagenet"))
    how = TrainConfig.from_dict(composed("data=imagenet", "data.num_workers=2", "data.pin_memory=false",
                                         "data.persistent_workers=false", "data.prefetch_factor=4"))
    assert how.hash() == base.hash()
    assert TrainConfig.from_dict(composed("data=imagenet", "data.image_size=192")).hash() != base.hash()
    assert TrainConfig.from_dict(composed("data=imagenet", "data.resize=288")).hash() != base.hash()


# --- training ------------------------------------------------------------------------------------

def imagenet_config(root: Path, *overrides: str) -> TrainConfig:
    return TrainConfig.from_dict(composed(
        "~experiment", "data=imagenet", f"data.root={root}", "data.image_size=32", "data.resize=36", "data.val_fraction=0.25",
        "data.num_workers=2", "data.eval_batch_size=8", "model=resnet18", "trainer.epochs=1",
        "trainer.batch_size=8", "trainer.device=cpu", "trainer.progress=false", *overrides))


@pytest.mark.slow
def test_a_short_run_on_imagenet_completes_and_its_model_re_evaluates(root, tmp_path, capsys):
    summary = train(imagenet_config(root), tmp_path / "run")
    assert summary["status"] == "completed" and summary["model"] == "resnet18" and summary["data"] == "imagenet"
    assert 0 <= summary["test_error"] <= 1 and summary["remaining_pct"] <= 100
    # `sensreg eval` rebuilds the model and reads the test folder again: the same figures.
    sensreg_main(["eval", str(tmp_path / "run"), "--json", "trainer.device=cpu"])
    result = json.loads(capsys.readouterr().out)
    assert result["test_error"] == summary["test_error"] and result["matches_summary"] is True
    test, num_classes, shape = load_test_split("imagenet", root, **SMALL, num_workers=0)
    assert (len(test), num_classes, shape) == (9, 3, (3, 16, 16))


@pytest.mark.slow
def test_an_interrupted_run_resumes_the_same_order(root, tmp_path, monkeypatch):
    # 18 training images in batches of 4: 5 steps an epoch. The run is stopped in epoch 2
    # and continued; its batches come in the uninterrupted run's order (the augmentation draws
    # are new ones, so only the labels are compared).
    cfg = imagenet_config(root, "model=lenet300", "trainer.epochs=2", "trainer.batch_size=4")
    original, seen = TrainStep.__call__, {"full": [], "cut": []}

    def recording(run: str, stop_at: int | None):
        def step(self, x, y, lam, total=None, **kwargs):
            seen[run].append(y.tolist())
            if len(seen[run]) == stop_at:
                signal.raise_signal(signal.SIGINT)
            return original(self, x, y, lam, total, **kwargs)
        return step

    monkeypatch.setattr(TrainStep, "__call__", recording("full", None))
    train(cfg, tmp_path / "full")
    monkeypatch.setattr(TrainStep, "__call__", recording("cut", 7))
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(TrainStep, "__call__", recording("cut", None))
    summary = train(cfg, tmp_path / "cut", resume_state(cfg, tmp_path / "cut" / "last.pt"))
    assert summary["status"] == "completed" and len(seen["full"]) == 10
    assert seen["cut"] == seen["full"]
