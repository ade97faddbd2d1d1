"""Every registered model: its size against the published figures, its dense FLOPs, and one
cheap pass through what training does with it (forward, backward, specific sensitivity, a
pruning step, the sparsity statistics). The LeNets' sizes and FLOPs are checked by hand in
tests/test_pruning.py; here they only go through the pass."""

from __future__ import annotations

from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sensreg.models import EXTERNAL, MODELS, build_model
from sensreg.method.pruning import Masks, layer_macs_per_weight, prunable_names, sparsity_stats

from conftest import composed
from sensreg.method.sensitivity import get_variant, gradients_and_sensitivity
from sensreg.method.step import StepSettings
from sensreg.run.loop import TrainStep

pytestmark = pytest.mark.usefixtures("single_thread")

# name: (classes, the input the published figures are for, a small input for the training pass:
# 64x64 for the ImageNet networks, whose adaptive pooling takes any side from 32 up)
SETUPS = {
    "lenet300": (10, (1, 28, 28), (1, 28, 28)),
    "lenet5": (10, (1, 28, 28), (1, 28, 28)),
    "vgg16": (1000, (3, 224, 224), (3, 64, 64)),
    "resnet18": (1000, (3, 224, 224), (3, 64, 64)),
    "resnet50": (1000, (3, 224, 224), (3, 64, 64)),
    "resnet101": (1000, (3, 224, 224), (3, 64, 64)),
    "vgg16_cifar": (10, (3, 32, 32), (3, 32, 32)),
    "resnet20": (10, (3, 32, 32), (3, 32, 32)),
    "resnet32": (10, (3, 32, 32), (3, 32, 32)),
    "resnet56": (10, (3, 32, 32), (3, 32, 32)),
}
SLOW = {"vgg16"}  # 138 M parameters: ~12 s for the training pass, ~4 s for the FLOPs, on one core


def param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


def build(name: str, shape_index: int = 1) -> nn.Module:
    torch.manual_seed(0)
    classes, *shapes = SETUPS[name]
    return build_model(name, classes, shapes[shape_index - 1])


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_registered_model_is_covered_and_has_a_config():
    assert set(SETUPS) == set(MODELS)
    folder = resources.files("sensreg.configs") / "model"
    configs = {p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")}
    assert configs == set(MODELS) | set(EXTERNAL)  # and the outside ones: test_external_models.py
    for name in MODELS:
        assert composed("~experiment", f"model={name}")["model"] == {"name": name}


# --- sizes -------------------------------------------------------------------------------------------

# The figures torchvision publishes for its ImageNet models (1000 classes).
TORCHVISION = {"vgg16": 138_357_544, "resnet18": 11_689_512, "resnet50": 25_557_032, "resnet101": 44_549_160}


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_parameter_counts(name):
    assert count(build(name)) == TORCHVISION[name]


def cifar_resnet_params(n: int, classes: int = 10) -> int:
    """Counted by hand: 3x3 convs without bias, batch norm (2 per channel), fc 64 -> C."""
    stem = 3 * 16 * 9 + 2 * 16
    block = lambda c_in, c: c_in * c * 9 + c * c * 9 + 4 * c  # noqa: E731
    stages = sum(block(c_in, c) + (n - 1) * block(c, c) for c_in, c in ((16, 16), (16, 32), (32, 64)))
    return stem + stages + 64 * classes + classes


@pytest.mark.parametrize("name, n", [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)])
def test_cifar_resnet_parameter_counts(name, n):
    assert count(build(name)) == cifar_resnet_params(n)


def test_cifar_resnet_published_sizes():
    # He et al. 2016, Table 6: 0.27 M, 0.46 M and 0.85 M parameters with option A shortcuts
    # (option B's 1x1 projections would add ~10 k to ResNet-32).
    for name, millions in (("resnet20", 0.27), ("resnet32", 0.46), ("resnet56", 0.85)):
        assert abs(count(build(name)) / 1e6 - millions) < 0.005, name
    assert count(build("resnet32")) == 464_154


def test_vgg16_cifar_parameter_count():
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = sum(c_in * c * 9 + c for c_in, c in zip([3] + widths, widths))  # with bias
    expected = convs + 2 * sum(widths) + 512 * 10 + 10
    assert count(build("vgg16_cifar")) == expected == 14_728_266  # the usual "14.7 M"
    # wider inputs: the classifier reads the 2x2 grid of 512 features
    assert count(build_model("vgg16_cifar", 10, (3, 64, 64))) == expected + 3 * 512 * 10


# --- FLOPs ---------------------------------------------------------------------------------------------

# Dense multiply-accumulates per image at the published input size: torchvision's published
# GFLOPS (which count MACs) for the ImageNet models; for VGG-16 and ResNet-56 on CIFAR the
# 3.13e8 and 1.25e8 of Li et al. 2017 (Pruning Filters for Efficient ConvNets), given to three
# digits; ResNet-20/32 counted the same way (16/32/64 channels on 32/16/8-pixel feature maps).
PUBLISHED_MACS = {"vgg16": 15.47e9, "resnet18": 1.81e9, "resnet50": 4.09e9, "resnet101": 7.80e9,
                  "resnet20": 40.6e6, "resnet32": 68.9e6, "resnet56": 125e6, "vgg16_cifar": 313e6}


def counted_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of convolutions and matrix products by PyTorch's own FLOP counter (2 FLOPs a MAC;
    like sparsity_stats it does not count biases, batch norm, pooling or activations)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", [param(n) for n in PUBLISHED_MACS])
def test_dense_flops(name):
    model = build(name)
    full, tiny = SETUPS[name][1:]
    stats = sparsity_stats(model, full, prunable_names(model, "weights"))
    assert stats["flops"]["dense"] == pytest.approx(PUBLISHED_MACS[name], rel=0.005)
    assert stats["flops"]["dense"] == counted_macs(model, full)
    if tiny != full:  # conv FLOPs follow the output size; the classifier's do not
        assert sparsity_stats(model, tiny, [])["flops"]["dense"] == counted_macs(model, tiny)


def test_cifar_conv_flops_follow_the_feature_map_size():
    positions = layer_macs_per_weight(build("resnet20"), (3, 32, 32))
    assert positions["conv1.weight"] == 32 * 32 and positions["fc.weight"] == 1
    for stage, side in ((1, 32), (2, 16), (3, 8)):
        for block in range(3):
            for conv in (1, 2):
                assert positions[f"layer{stage}.{block}.conv{conv}.weight"] == side * side
    positions = layer_macs_per_weight(build("vgg16_cifar"), (3, 32, 32))
    assert positions["conv1_1.weight"] == 32 * 32 and positions["conv3_3.weight"] == 8 * 8
    assert positions["conv5_3.weight"] == 2 * 2 and positions["fc.weight"] == 1


# --- the pieces of a training step --------------------------------------------------------------------

@pytest.mark.parametrize("name", [param(n) for n in MODELS])
def test_forward_backward_sensitivity_and_pruning(name):
    model = build(name, shape_index=2).train()
    classes, _, shape = SETUPS[name]
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    names = prunable_names(model, "weights")
    params = list(model.parameters())

    logits = model(x)
    assert logits.shape == (2, classes)
    grads, sens = gradients_and_sensitivity(get_variant("spec"), logits, F.cross_entropy(logits, y), y, params)
    assert [g.shape for g in grads] == [s.shape for s in sens] == [p.shape for p in params]
    # one reduction a tensor (VGG-16 has 138 M entries): a norm is finite iff every entry is
    assert bool(torch.stack(torch._foreach_norm(grads + sens)).isfinite().all())
    assert min(float(s.min()) for s in sens) >= 0
    assert float(grads[0].abs().sum()) > 0 and float(sens[0].abs().sum()) > 0  # it reaches the first layer
    # The output bias's sensitivity is exact: d mean_n z_{n, y_n} / d b_k = (# samples of class k) / N.
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    head_bias = next(s for p, s in zip(params, sens) if p is head.bias)
    expected = torch.zeros(classes)
    expected[:2] = 0.5
    assert torch.equal(head_bias, expected)

    # One pruning step at the median magnitude of a sample of every layer's weights.
    masks = Masks(model, names)
    threshold = float(torch.cat([p.detach().abs().flatten()[:2000] for p in masks.params]).median())
    kept = [p.abs() >= threshold for p in masks.params]
    assert masks.prune_below_(threshold) == sum(k.numel() - int(k.sum()) for k in kept) > 0
    for p, m, k in zip(masks.params, masks.masks, kept):
        assert torch.equal(m, k)
        assert torch.equal(p != 0, k)  # pruned entries exactly zero, the others kept
    assert bool(torch.isfinite(model(x)).all())

    stats = sparsity_stats(model, shape, names)
    assert model.training  # mode restored
    assert stats["prunable"]["nonzero"] == masks.kept() < masks.total() == stats["prunable"]["params"]
    assert stats["all"]["params"] == count(model)
    positions = layer_macs_per_weight(model, shape)
    assert stats["flops"]["remaining"] == sum(positions[n] * int(m.sum()) for n, m in zip(names, masks.masks))
    assert 0 < stats["flops"]["remaining"] < stats["flops"]["dense"] == counted_macs(model, shape)


@pytest.mark.parametrize("name", [param(n) for n in MODELS])
def test_every_model_takes_a_training_step_and_keeps_its_pruned_weights_at_zero(name):
    """The whole TrainStep (loss and specific-sensitivity backward, shrink, momentum step, masks):
    every parameter moves; after a pruning, the next step leaves the pruned entries exactly zero."""
    model = build(name, shape_index=2).train()
    classes, _, shape = SETUPS[name]
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    masks = Masks(model, prunable_names(model, "weights"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step = TrainStep(model, optimizer, masks, StepSettings(get_variant("spec"), prunable_names(model, "all")))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert bool(torch.isfinite(step(x, y, 1e-3)))
    assert [n for n, p in model.named_parameters() if torch.equal(p, before[n])] == []

    threshold = float(torch.cat([p.detach().abs().flatten()[:2000] for p in masks.params]).median())
    assert masks.prune_below_(threshold, optimizer) > 0
    kept = [m.clone() for m in masks.masks]
    assert bool(torch.isfinite(step(x, y, 1e-3)))
    for n, p, m, k in zip(masks.names, masks.params, masks.masks, kept):
        assert torch.equal(m, k) and not p[~m].any(), n


# --- input checks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape", [
    ("vgg16", (3, 16, 16)), ("vgg16", (1, 64, 64)), ("vgg16_cifar", (3, 28, 28)),
    ("resnet18", (1, 64, 64)), ("resnet32", (3, 32)),
])
def test_unusable_input_shapes_are_refused_at_construction(name, shape):
    with pytest.raises(ValueError, match="inputs"):
        build_model(name, 10, shape)


def test_cifar_resnet_depth_must_be_6n_plus_2():
    from sensreg.models.resnet import cifar_resnet

    assert count(cifar_resnet(44)) == cifar_resnet_params(7)
    with pytest.raises(ValueError, match="6n"):
        cifar_resnet(30)
