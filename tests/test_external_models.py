"""Any classifier from the command line: model=torchvision, timm and custom train every
variant on generated data, their model.pt re-evaluates to the run's figures from the checkpoint
alone, and a name that names nothing, or inputs a network cannot take, is refused before any
training with the closest names or the reason."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, composed, run_in_process

# Tiny runs: 40 training images of 3x32x32 in batches of 10, one epoch, pruning by search.
TINY = ["~experiment", "data=synthetic", "data.num_train=44", "data.num_test=20", "data.shape=[3,32,32]",
        "trainer.epochs=1", "trainer.batch_size=10", "trainer.device=cpu", "trainer.progress=false"]
VARIANTS = ["spec", "unspec", "loss", "l2", "none"]

CUSTOM = '''
from torch import nn


def gelu_net(num_classes, input_shape, width=24):
    """A module of the user's own: GELU and LayerNorm, which sensreg's networks never use."""
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, width), nn.LayerNorm(width), nn.GELU(),
                         nn.Linear(width, num_classes))


def no_arguments():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


class Wrapped(nn.Module):
    """The logits with something else: a tuple, a dict, integer labels, a flat vector."""

    def __init__(self, num_classes, input_shape, kind):
        super().__init__()
        c, h, w = input_shape
        self.kind, self.net = kind, nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

    def forward(self, x):
        y = self.net(x)
        return {"tuple": lambda: (y, y), "dict": lambda: {"logits": y}, "labels": lambda: y.argmax(1),
                "flat": lambda: y.flatten()}[self.kind]()


def wrapped(num_classes, input_shape, kind="tuple"):
    return Wrapped(num_classes, input_shape, kind)


def eleven_classes(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 11))


def no_parameters(num_classes, input_shape):
    return nn.Sequential(nn.Flatten(), nn.AdaptiveAvgPool1d(num_classes))


def all_frozen(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes)).requires_grad_(False)


def zero_width(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 0), nn.Linear(0, num_classes))


def bias_only(num_classes, input_shape):
    c, h, w = input_shape
    net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
    net[1].weight.requires_grad_(False)
    return net


def broken(num_classes, input_shape):
    return {"a": 1}["b"]


def frozen_first(num_classes, input_shape):
    """A frozen first layer (a pretrained backbone, say) under a trainable head."""
    c, h, w = input_shape
    net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 12), nn.ReLU(), nn.Linear(12, num_classes))
    net[1].requires_grad_(False)
    return net
'''


@pytest.fixture
def workdir(tmp_path, monkeypatch, in_process_cli):
    """A scratch folder holding the user's module, the working folder of the commands."""
    (tmp_path / "user_nets.py").write_text(CUSTOM)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "user_nets", raising=False)
    yield tmp_path
    sys.modules.pop("user_nets", None)


def train_and_check(workdir, name: str, *overrides: str) -> dict:
    from sensreg.run.reevaluate import evaluate_checkpoint

    run = workdir / name
    assert run_in_process("train", *TINY, *overrides, f"hydra.run.dir={run}") == 0, overrides
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    again = evaluate_checkpoint(run / "model.pt")  # rebuilt from the checkpoint's own config
    assert again["test_error"] == summary["test_error"]
    assert again["sparsity"]["prunable"]["remaining_pct"] == summary["remaining_pct"]
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("sens", VARIANTS)
def test_a_custom_module_with_gelu_and_layernorm_trains_every_variant(workdir, sens):
    summary = train_and_check(workdir, sens, "model=custom", "model.factory=user_nets:gelu_net",
                              "+model.kwargs.width=16", f"sens={sens}")
    assert summary["model"] == "custom"
    layers = {layer["name"]: layer["shape"] for layer in summary["sparsity"]["layers"]}
    assert layers["1.weight"] == [16, 3 * 32 * 32]  # the keyword argument reached the factory


@pytest.mark.parametrize("sens", ["spec", "unspec"])
def test_frozen_parameters_are_left_as_built_and_the_log_says_so(workdir, sens):
    from sensreg.records.checkpoint import load_checkpoint

    summary = train_and_check(workdir, f"frozen_{sens}", "model=custom", "model.factory=user_nets:frozen_first",
                              f"sens={sens}", "prune=gmp", "prune.target=10x", "prune.every=1")
    layers = {layer["name"]: layer for layer in summary["sparsity"]["layers"]}
    assert not layers["1.weight"]["prunable"] and layers["1.weight"]["remaining_pct"] == 100
    assert layers["3.weight"]["prunable"]
    assert "frozen (requires_grad False): 2 parameter tensors" in (workdir / f"frozen_{sens}" / "train.log").read_text()
    # The frozen layer has no mask and nothing of it was pruned.
    ckpt = load_checkpoint(workdir / f"frozen_{sens}" / "model.pt")
    assert "1.weight" not in ckpt["masks"]
    assert bool((ckpt["state_dict"]["1.weight"] != 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("sens", VARIANTS)
def test_a_torchvision_mobilenet_trains_every_variant(workdir, sens):
    train_and_check(workdir, sens, "model=torchvision", "model.arch=mobilenet_v3_small", f"sens={sens}")


@pytest.mark.slow
def test_a_torchvision_model_takes_grayscale_images(workdir):
    # As a user would try it first: MNIST-shaped generated data, one channel, repeated to three.
    summary = train_and_check(workdir, "gray", "model=torchvision", "model.arch=mobilenet_v3_small",
                              "data.shape=[1,28,28]")
    assert summary["sparsity"]["layers"][0]["name"].startswith("net.features.0")


@pytest.mark.slow
def test_a_torchvision_vit_trains(workdir):
    # ViT-B/32 on 32x32 images: one patch and the class token.
    train_and_check(workdir, "vit", "model=torchvision", "model.arch=vit_b_32", "+model.kwargs.image_size=32",
                    "data.num_train=22", "trainer.batch_size=5")


@pytest.mark.slow
@pytest.mark.parametrize("sens", ["spec", "unspec"])
def test_a_timm_vit_trains(workdir, sens):
    pytest.importorskip("timm")
    train_and_check(workdir, sens, "model=timm", "model.arch=vit_tiny_patch16_224", "+model.kwargs.img_size=32",
                    f"sens={sens}")


def test_a_factory_without_the_usual_arguments_gets_its_keyword_arguments_only(workdir):
    from sensreg.run.config import TrainConfig

    TrainConfig.from_dict(composed(*TINY, "model=custom", "model.factory=user_nets:no_arguments"))


def refusal(workdir, capsys, *overrides: str) -> str:
    assert run_in_process("train", *TINY, *overrides, f"hydra.run.dir={workdir / 'refused'}") == 2
    assert not (workdir / "refused").exists()  # refused before anything was written
    return " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("overrides, expected", [
    (["model=torchvision", "model.arch=mobilenet_v4"],
     "model.arch=mobilenet_v4 is no torchvision classification model (closest: mobilenet_v2, mobilenet_v3_small"),
    (["model=torchvision", "model.arch=fasterrcnn_resnet50_fpn"], "is no torchvision classification model"),
    (["model=custom"], "model=custom needs model.factory (e.g. model.factory=mypkg.nets:small_cnn)"),
    (["model=custom", "model.factory=user_nets"], "is not of the form package.module:function"),
    (["model=custom", "model.factory=no_such_module:f"], "module no_such_module cannot be imported"),
    (["model=custom", "model.factory=user_nets:gelu_nett"], "has no function gelu_nett (closest: gelu_net)"),
    (["model=lenet5", "+model.arch=resnet18"], "model.arch is read by model=torchvision, timm or custom only"),
    (["model=torchvision", "data.shape=[2,28,28]"],
     "model.name=torchvision (resnet18) cannot train on data.name=synthetic (inputs 2x28x28)"),
    (["model=custom", "model.factory=user_nets:gelu_net", "sens.reduction=sample"], "LayerNorm"),
    (["model=custom", "model.factory=user_nets:wrapped"], "returns a tuple, not a tensor of shape (batch, 10)"),
    (["model=custom", "model.factory=user_nets:wrapped", "+model.kwargs.kind=dict"], "returns a dict"),
    (["model=custom", "model.factory=user_nets:wrapped", "+model.kwargs.kind=labels"], "returns torch.int64 values"),
    (["model=custom", "model.factory=user_nets:wrapped", "+model.kwargs.kind=flat"], "returns shape (20,)"),
    (["model=custom", "model.factory=user_nets:eleven_classes"], "returns shape (2, 11) for a batch of 2, not (2, 10)"),
    (["model=custom", "model.factory=user_nets:no_parameters"], "has no trainable parameter (it has none)"),
    (["model=custom", "model.factory=user_nets:all_frozen"], "has no trainable parameter (all are frozen)"),
    (["model=custom", "model.factory=user_nets:zero_width"], "has a layer of size zero (1.weight"),
    (["model=custom", "model.factory=user_nets:broken"], "model.name=custom (user_nets:broken) could not be built "
                                                          "with its settings (10 classes, inputs 3x32x32): KeyError: 'b'. "
                                                          "Fix the model's factory"),
    (["model=custom", "model.factory=user_nets:bias_only", "prune=gmp", "prune.params=weights"],
     "has no parameter that prune.params=weights may prune"),
])
def test_what_names_nothing_or_cannot_train_is_refused_before_training(workdir, capsys, overrides, expected):
    message = refusal(workdir, capsys, *overrides)
    assert expected in message and "Traceback" not in message


def test_the_configs_of_the_outside_models_are_shipped():
    for name in ("torchvision", "timm", "custom"):
        assert (REPO / "configs" / "model" / f"{name}.yaml").is_file()
    assert composed("model=torchvision")["model"] == {"name": "torchvision", "arch": "resnet18", "kwargs": {}}


@pytest.mark.parametrize("error", ["cuda", "cpu"])
def test_running_out_of_memory_is_one_paragraph_naming_the_batch_size(workdir, capsys, monkeypatch, error):
    import torch

    from sensreg.run.loop import TrainStep

    def exhausted(self, *args, **kwargs):
        if error == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 123456789 bytes.")
    monkeypatch.setattr(TrainStep, "__call__", exhausted)
    assert run_in_process("train", *TINY, f"hydra.run.dir={workdir / 'oom'}") == 1
    message = " ".join(capsys.readouterr().err.split())
    assert "out of memory" in message and "trainer.batch_size=10" in message and "Lower trainer.batch_size" in message
    assert "Traceback" not in message
    assert json.loads((workdir / "oom" / "summary.json").read_text())["status"] == "failed"


def test_a_custom_models_run_is_evaluated_and_reported_from_another_folder(workdir, in_process_cli, monkeypatch,
                                                                           tmp_path_factory, capsys):
    summary = train_and_check(workdir, "custom_run", "model=custom", "model.factory=user_nets:gelu_net")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)  # user_nets.py is not here, nor on sys.path as the working folder
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(workdir))])
    sys.modules.pop("user_nets", None)
    capsys.readouterr()
    assert run_in_process("eval", str(workdir / "custom_run"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["test_error"] == summary["test_error"]
    assert run_in_process("report", str(workdir / "custom_run"), "--out", str(elsewhere / "report")) == 0
