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
    from sensreg.commands.reevaluate import evaluate_checkpoint

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
])
def test_what_names_nothing_or_cannot_train_is_refused_before_training(workdir, capsys, overrides, expected):
    assert expected in refusal(workdir, capsys, *overrides)


def test_the_configs_of_the_outside_models_are_shipped():
    for name in ("torchvision", "timm", "custom"):
        assert (REPO / "configs" / "model" / f"{name}.yaml").is_file()
    assert composed("model=torchvision")["model"] == {"name": "torchvision", "arch": "resnet18", "kwargs": {}}
