"""trainer.init from a state dict file in torchvision's format: loaded exactly, from the file only
(nothing is downloaded), with one clear message when it does not fit the network."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import torch
import torchvision
from torch import nn

from sensreg.run import lifecycle as train_module
from sensreg.records.checkpoint import CheckpointError
from sensreg.run.init_weights import init_model_, load_init_state
from sensreg.data import Dataset, Split
from sensreg.models import build_model
from sensreg.run.lifecycle import setup as setup_run  # not `setup`: pytest < 9 would call it as a module set-up

from conftest import config  # the small synthetic-data run every training test starts from

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def offline(monkeypatch):
    """Every way torch and torchvision fetch weights, and any network connection, fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def torchvision_weights(name: str, num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict as torchvision publishes its weights, with batch-norm statistics that are not
    the initial ones (so that loading them is seen)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(1234)
    return model.state_dict()


def fake_cifar(monkeypatch, num_classes: int = 10) -> None:
    """setup() on four random 3x32x32 images instead of CIFAR-10 (not needed: only the model counts)."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        return Split(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, num_classes, (n,), generator=g))

    monkeypatch.setattr(train_module, "load_dataset",
                        lambda *a, **k: Dataset(split(4), split(2), split(2), num_classes, (3, 32, 32)))


def cifar_config(model: str, init) -> object:
    return config(data={"name": "cifar10"}, model={"name": model}, trainer={"init": str(init)})


def assert_same_tensors(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert own[k].dtype == v.dtype and torch.equal(own[k], v), k


# --- loading ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("wrap", ["plain", "ddp", "nested"])
def test_setup_loads_a_torchvision_state_dict_exactly_without_downloading(tmp_path, monkeypatch, offline, wrap):
    state = torchvision_weights("resnet18", num_classes=10)
    saved = {"plain": state, "ddp": {f"module.{k}": v for k, v in state.items()},
             "nested": {"model": state, "epoch": 90, "best_acc1": 69.8}}[wrap]
    torch.save(saved, tmp_path / "resnet18.pth")
    fake_cifar(monkeypatch)
    _, _, model = setup_run(cifar_config("resnet18", tmp_path / "resnet18.pth"))
    assert_same_tensors(model, state)
    reference = torchvision.models.resnet18(num_classes=10)
    reference.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # close, not equal: setup() makes the model channels-last (other kernels)
        torch.testing.assert_close(model.eval()(x), reference.eval()(x))


def test_imagenet_weights_load_into_the_imagenet_network(tmp_path, offline):
    # A 1000-class file into sensreg's resnet18 for ImageNet, as for torchvision's published
    # weights; the outputs of two 224x224 images are torchvision's own.
    state = torchvision_weights("resnet18")
    torch.save(state, tmp_path / "resnet18-imagenet.pth")
    model = build_model("resnet18", 1000, (3, 224, 224))
    init_model_(model, tmp_path / "resnet18-imagenet.pth", "resnet18", 1000, "imagenet")
    assert_same_tensors(model, state)
    reference = torchvision.models.resnet18()
    reference.load_state_dict(state)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference.eval()(x))


@pytest.mark.parametrize("name,classifier", [("resnet18", "fc"), ("resnet50", "fc"), ("vgg16", "classifier.6")])
def test_the_networks_have_torchvision_keys_and_shapes(name, classifier):
    # Built on the meta device: shapes only (VGG-16 has 138 million parameters).
    with torch.device("meta"):
        ours = build_model(name, 1000, (3, 224, 224)).state_dict()
        theirs = getattr(torchvision.models, name)(weights=None).state_dict()
        cifar = build_model(name, 10, (3, 32, 32)).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    # For ten classes only the last classifier layer differs.
    differ = {k for k in theirs if cifar[k].shape != theirs[k].shape}
    assert differ == {f"{classifier}.weight", f"{classifier}.bias"}
    assert cifar[f"{classifier}.weight"].shape[0] == 10


def test_wrappers_and_prefixes_are_removed(tmp_path):
    state = {"fc1.weight": torch.randn(3, 2), "fc1.bias": torch.randn(3)}
    for i, saved in enumerate([state, {"state_dict": state, "epoch": 3}, {"model": state},
                               {f"module.{k}": v for k, v in state.items()},
                               {"state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}}]):
        torch.save(saved, tmp_path / f"{i}.pt")
        loaded = load_init_state(tmp_path / f"{i}.pt")
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state), saved.keys()
    # A prefix that only some keys carry is part of the names.
    torch.save({"module.a": state["fc1.bias"], "b": state["fc1.bias"]}, tmp_path / "mixed.pt")
    assert set(load_init_state(tmp_path / "mixed.pt")) == {"module.a", "b"}


def test_a_file_without_batch_norm_step_counters_loads(tmp_path, offline):
    # torchvision's older published files predate num_batches_tracked.
    state = {k: v for k, v in torchvision_weights("resnet18", 10).items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    model = build_model("resnet18", 10, (3, 32, 32))
    init_model_(model, tmp_path / "old.pth", "resnet18", 10, "cifar10")
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())


# --- files that do not fit -------------------------------------------------------------------------

def test_an_imagenet_classifier_in_a_ten_class_model_is_one_clear_paragraph(tmp_path, monkeypatch, offline):
    torch.save(torchvision_weights("resnet18"), tmp_path / "resnet18-imagenet.pth")
    fake_cifar(monkeypatch)
    with pytest.raises(CheckpointError) as err:
        setup_run(cifar_config("resnet18", tmp_path / "resnet18-imagenet.pth"))
    message = str(err.value)
    assert "\n" not in message and err.value.__cause__ is None and err.value.__context__ is None
    for part in ("resnet18-imagenet.pth", "fc.weight: 1000x512 in the file, 10x512 in the model",
                 "fc.bias: 1000 in the file, 10 in the model", "1000 classes", "data.name=cifar10 has 10"):
        assert part in message


def test_a_classifier_of_a_known_dataset_names_its_config(tmp_path):
    model = build_model("resnet20", 100, (3, 32, 32))
    torch.save(model.state_dict(), tmp_path / "c100.pt")
    with pytest.raises(CheckpointError, match=r"fc.weight: 100x64 in the file, 10x64 in the model.*\(data=cifar100\)"):
        init_model_(build_model("resnet20", 10, (3, 32, 32)), tmp_path / "c100.pt", "resnet20", 10, "cifar10")


def test_another_network_is_named_by_its_keys(tmp_path):
    torch.save(torchvision_weights("resnet18", 10), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError) as err:
        init_model_(build_model("resnet50", 10, (3, 32, 32)), tmp_path / "resnet18.pth", "resnet50", 10, "cifar10")
    message = str(err.value)
    assert "\n" not in message
    assert "is not a checkpoint of model resnet50" in message and "missing in the file: layer1.0.conv3.weight" in message
    assert "model.name" in message


def test_other_input_sizes_are_not_mistaken_for_classes(tmp_path):
    # LeNet-300-100 saved for 28x28 inputs, loaded into one for 32x32x3: fc1 differs, not the classes.
    torch.save(build_model("lenet300", 10, (1, 28, 28)).state_dict(), tmp_path / "mnist.pt")
    with pytest.raises(CheckpointError) as err:
        init_model_(build_model("lenet300", 10, (3, 32, 32)), tmp_path / "mnist.pt", "lenet300", 10, "cifar10")
    assert "fc1.weight: 300x784 in the file, 300x3072 in the model" in str(err.value)
    assert "classes:" in str(err.value) and "classifier" not in str(err.value)


def test_a_dict_without_tensors_is_refused(tmp_path):
    torch.save({"epoch": 3, "model": {"step": 1}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="neither a sensreg model.pt nor a state dict"):
        load_init_state(tmp_path / "x.pt")


@pytest.mark.parametrize("change, expected", [
    (lambda t: t.round().long(), "fc1.weight holds int64 values"),
    (lambda t: t.clone().fill_(float("nan")), "fc1.weight holds nan or inf"),
])
def test_integer_or_non_finite_weights_are_refused_and_a_load_is_logged(tmp_path, caplog, change, expected):
    state = build_model("lenet300", 10, (1, 28, 28)).state_dict()
    torch.save(state, tmp_path / "good.pt")
    with caplog.at_level("INFO", logger="sensreg"):
        init_model_(build_model("lenet300", 10, (1, 28, 28)), tmp_path / "good.pt", "lenet300", 10, "mnist")
    assert any("trainer.init: loaded 6 tensors (266,610 values)" in r.getMessage() for r in caplog.records)
    state["fc1.weight"] = change(state["fc1.weight"])
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=expected):
        init_model_(build_model("lenet300", 10, (1, 28, 28)), tmp_path / "bad.pt", "lenet300", 10, "mnist")
