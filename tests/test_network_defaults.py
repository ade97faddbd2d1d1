"""Each registered network trains at its defaults: `sensreg train model=NAME sens=none prune=none`
does not diverge in its first few hundred steps on data of the shape the network is made for.

The learning rate is the one setting that differs between networks (``models.NETWORK_LR``); the
plain control without a regularizer is the hardest case, as no shrink holds the weights back.
LeNet-300-100 and LeNet-5 train on MNIST here; the CIFAR and ImageNet networks on generated
data of CIFAR's and ImageNet's shapes, on a GPU (a few hundred of their steps take the CPU tens
of minutes; scripts/gpu_session.sh runs them).
"""

from __future__ import annotations

import math

import pytest
import torch

from sensreg.run.config import TrainConfig
from sensreg.models import MODELS, NETWORK_LR
from sensreg.run.optimizers import OPTIMIZERS
from sensreg.method.pruning import Masks
from sensreg.run.lifecycle import setup as setup_run  # not `setup`: pytest < 9 would call it as a module set-up
from sensreg.method.sensitivity import get_variant
from sensreg.method.step import StepSettings
from sensreg.run.loop import TrainStep, build_optimizer
from sensreg.data import batches

from conftest import HAVE_MNIST, composed

STEPS = 300
MNIST_NETWORKS = ("lenet300", "lenet5")
CIFAR_NETWORKS = ("resnet20", "resnet32", "resnet56", "vgg16_cifar")
SHAPES = {**{name: ([3, 32, 32], 10) for name in CIFAR_NETWORKS},
          **{name: ([3, 224, 224], 1000) for name in ("vgg16", "resnet18", "resnet50", "resnet101")}}


def test_every_registered_network_is_tried_here():
    assert set(MODELS) == set(MNIST_NETWORKS) | set(SHAPES)


def networks():
    mnist = pytest.mark.skipif(not HAVE_MNIST, reason="MNIST not in data/ (see README)")
    gpu = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
    return ([pytest.param(name, marks=[mnist, pytest.mark.slow]) for name in MNIST_NETWORKS]
            + [pytest.param(name, marks=gpu) for name in SHAPES])


def default_config(name: str) -> TrainConfig:
    overrides = ["~experiment", f"model={name}", "sens=none", "prune=none", "trainer.progress=false"]
    if name in SHAPES:
        shape, classes = SHAPES[name]
        overrides += ["data=synthetic", f"data.shape=[{','.join(map(str, shape))}]",
                      f"data.num_classes={classes}", "data.num_train=3000", "data.num_test=100",
                      "trainer.device=cuda"]
    return TrainConfig.from_dict(composed(*overrides))


@pytest.mark.parametrize("name", networks())
def test_the_defaults_of_each_network_train_it_without_diverging(name):
    cfg = default_config(name)
    assert cfg.optim.lr == OPTIMIZERS["sgd"].default_lr(name)
    _, data, model = setup_run(cfg)
    optimizer = build_optimizer(cfg, model.parameters())
    step = TrainStep(model, optimizer, Masks(model, []), StepSettings(get_variant("none"), regularize=[]))
    losses, generator = [], torch.Generator().manual_seed(0)
    while len(losses) < STEPS:
        for x, y in batches(data.train, cfg.trainer.batch_size, shuffle=True, generator=generator):
            losses.append(float(step(x, y, lam=0.0)))
            if len(losses) == STEPS:
                break
    assert all(math.isfinite(loss) for loss in losses), f"diverged at step {next(i for i, v in enumerate(losses) if not math.isfinite(v))}"
    assert sum(losses[-50:]) < sum(losses[:50]), "the loss did not go down"


def test_an_unset_learning_rate_is_the_networks_default_and_a_given_one_wins():
    assert TrainConfig.from_dict(composed("~experiment", "model=lenet5")).optim.lr == NETWORK_LR[("lenet5", "sgd")]
    assert TrainConfig.from_dict(composed("~experiment")).optim.lr == OPTIMIZERS["sgd"].DEFAULT_LR
    assert TrainConfig.from_dict(composed("~experiment", "model=lenet5", "optim=adam")).optim.lr == OPTIMIZERS["adam"].DEFAULT_LR
    assert TrainConfig.from_dict(composed("~experiment", "model=lenet5", "optim.lr=0.05")).optim.lr == 0.05
    assert TrainConfig(optim=TrainConfig().optim.__class__(lr=None)).optim.lr == OPTIMIZERS["sgd"].DEFAULT_LR
