"""Exact compaction (sensreg.compact): what goes, what stays, and that the compacted network
computes what the masked one computes, for small hand-built cases checked against their
explicit arithmetic and for every registered model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sensreg
from sensreg.method.compaction import SelectInputs, compact
from sensreg.models import MODELS, build_model


def kill_units(model: nn.Module, seed: int = 0, rows: float = 0.3, cols: float = 0.2) -> nn.Module:
    """Zero the incoming weights of a share of every layer's units, and the weights on a share of
    its inputs (what the shrink and pruning leave), and give batch norms statistics of their own
    (so that a silent unit's constant is not zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.shape[0] > 1:
                m.weight[torch.rand(m.weight.shape[0], generator=g) < rows] = 0
                if m.weight.shape[1] > 1:
                    m.weight[:, torch.rand(m.weight.shape[1], generator=g) < cols] = 0
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.5, 2, generator=g)
                m.bias.data.uniform_(-1, 1, generator=g)
    return model.eval()


def assert_same_function(compacted: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    """Logits equal to float tolerance; predictions equal wherever the top two logits are
    further apart than that tolerance (a nearer tie may go either way by rounding)."""
    with torch.no_grad():
        want, got = model(x), compacted(x)
    tolerance = 1e-5 * (1 + float(want.abs().max()))
    assert float((got - want).abs().max()) <= tolerance
    top2 = want.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
    assert torch.equal(got.argmax(1)[clear], want.argmax(1)[clear])


def layer(result, name):
    return next(l for l in result.layers if l.name == name)


def test_unused_silent_and_unread_units_of_a_small_mlp_go_and_the_constant_folds_into_the_next_bias():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        net[0].weight[1] = 0  # unit 1 silent: it outputs relu(b1[1]) whatever the input
        net[0].bias[1] = 0.7
        net[2].weight[:, 3] = 0  # unit 3 unused: nothing reads it
        net[0].weight[:, 2] = 0  # input 2 unread
    x = torch.randn(32, 4)
    result = compact(net, x)
    small = result.model
    assert result.shape() == "3-3-3" and result.changed
    # What the fold must give, by hand: the next layer's bias takes W2[:, 1] * relu(0.7).
    expected_bias = net[2].bias + net[2].weight[:, 1] * 0.7
    assert torch.allclose(small[2].bias, expected_bias, atol=1e-6)
    assert torch.equal(small[2].weight, net[2].weight[:, [0, 2, 4]])
    assert torch.equal(small[0][1].weight, net[0].weight[[0, 2, 4]][:, [0, 1, 3]])
    assert isinstance(small[0][0], SelectInputs) and small[0][0].index.tolist() == [0, 1, 3]
    assert_same_function(small, net, x)
    assert result.params == {"dense": 5 * 4 + 5 + 3 * 5 + 3, "nonzero": int(sum(p.count_nonzero() for p in net.parameters())),
                             "compact": 3 * 3 + 3 + 3 * 3 + 3}
    assert result.macs == {"dense": 20 + 15, "nonzero": int(net[0].weight.count_nonzero() + net[2].weight.count_nonzero()),
                           "compact": 9 + 9}
    assert net[0].weight.shape == (5, 4)  # the model itself is left as it was


@pytest.mark.parametrize("padding, bias, kept", [
    (1, 0.5, 3),   # across zero padding a constant of 0.5 cannot fold: the unit stays
    (0, 0.5, 2),   # without padding it folds, and goes
    (1, -0.5, 2),  # a constant of 0 (relu(-0.5)) needs no fold, padding or not
])
def test_a_silent_filter_folds_into_an_unpadded_convolution_only(padding, bias, kept):
    torch.manual_seed(0)
    side = 8 - 2 + 2 * padding - 2
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=padding), nn.Flatten(),
                        nn.Linear(2 * side * side, 4))
    with torch.no_grad():
        net[0].weight[1] = 0
        net[0].bias[1] = bias
    x = torch.randn(8, 1, 8, 8)
    result = compact(net, x)
    assert layer(result, "0").units_kept == kept
    assert_same_function(result.model, net, x)


class Residual(nn.Module):
    """conv0, then a block conv_a added to its input, pooled, then a linear layer: channel c
    of the sum is written by conv0 and conv_a together."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(1, 4, 3, bias=False)
        self.conv_a = nn.Conv2d(4, 4, 1, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.conv0(x)
        return self.fc((self.conv_a(y) + y).mean(dim=(2, 3)))


@pytest.mark.parametrize("dead_in, kept", [(("conv_a",), 4), (("conv0", "conv_a"), 3)])
def test_a_channel_of_a_residual_sum_goes_only_when_every_layer_tied_to_it_is_dead(dead_in, kept):
    torch.manual_seed(0)
    net = Residual()
    with torch.no_grad():
        for name in dead_in:
            getattr(net, name).weight[2] = 0
    x = torch.randn(8, 1, 10, 10)
    result = compact(net, x)
    assert [layer(result, n).units_kept for n in ("conv0", "conv_a")] == [kept, kept]
    assert layer(result, "fc").inputs_kept == kept
    assert_same_function(result.model, net, x)


def test_a_network_with_nothing_removable_comes_back_unchanged_and_says_so():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(4, 6)
    result = compact(net, x)
    assert not result.changed and result.params["compact"] == result.params["dense"] == 47
    assert result.shape() == "6-5-2" and result.not_compacted == []
    assert_same_function(result.model, net, x)


def test_masks_are_applied_to_a_copy_and_frozen_layers_are_compacted_too():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    net[0].requires_grad_(False)  # a frozen first layer (not prunable by default: masks given by name)
    masks = sensreg.Masks(net, [name for name, _ in net.named_parameters()])
    masks.masks[0][3] = False  # unit 3 of the first layer: all its incoming weights pruned
    masks.masks[1][3] = False  # and its bias
    x = torch.randn(4, 6)
    for masks in (masks, dict(zip(masks.names, masks.masks))):
        result = compact(net, x, masks)
        assert layer(result, "0").units_kept == 4
        masked = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
        masked.load_state_dict(net.state_dict())
        with torch.no_grad():
            masked[0].weight[3], masked[0].bias[3] = 0, 0
        assert_same_function(result.model, masked, x)
    assert bool(net[0].weight[3].abs().sum() > 0) and not net[0].weight.requires_grad


def test_masks_of_another_model_are_refused():
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="no parameter of the model"):
        compact(net, torch.randn(2, 6), {"fc9.weight": torch.ones(5, 6, dtype=torch.bool)})


# (The ImageNet networks at 32x32: every layer and tie is there, at a sixteenth of the work of 128x128.)
SHAPES = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "vgg16": (3, 32, 32), "resnet18": (3, 32, 32),
          "resnet50": (3, 32, 32), "resnet101": (3, 32, 32)}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_compacts_to_the_same_function(name):
    torch.manual_seed(0)
    shape = SHAPES.get(name, (3, 32, 32))
    net = kill_units(build_model(name, 10, shape))
    x = torch.randn(4, *shape)
    result = compact(net, x)
    assert result.changed and result.params["compact"] < result.params["dense"]
    assert result.macs["compact"] < result.macs["dense"]
    assert result.not_compacted == [], result.not_compacted
    assert_same_function(result.model, net, x)


@pytest.mark.parametrize("source, arch, shape, kwargs", [
    ("torchvision", "resnet18", (3, 64, 64), {}), ("torchvision", "mobilenet_v3_small", (3, 64, 64), {}),
    ("timm", "vit_tiny_patch16_224", (3, 32, 32), {"img_size": 32}),  # (four patches: the blocks as at 224)
])
def test_outside_classifiers_compact_exactly_where_they_can_and_name_what_they_cannot(source, arch, shape, kwargs):
    if source == "timm":
        pytest.importorskip("timm")
    torch.manual_seed(0)
    net = kill_units(build_model(source, 10, shape, arch=arch, kwargs=kwargs))
    x = torch.randn(2, *shape)
    result = compact(net, x)
    assert result.changed
    assert_same_function(result.model, net, x)
    if source == "timm":
        # An MLP's hidden units go (fc1's output, fc2's input); attention's are named and kept.
        assert layer(result, "blocks.0.mlp.fc1").units_kept < layer(result, "blocks.0.mlp.fc1").units
        assert any("blocks.0.attn.qkv" in note and "kept" in note for note in result.not_compacted)


def test_csr_linears_give_the_same_outputs_with_the_weights_stored_sparse():
    from sensreg import csr_linears
    from sensreg.method.csr import CSRLinear

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3, bias=False))
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight.mul_(torch.rand_like(layer.weight) < 0.3)  # mostly zeros
    sparse = csr_linears(model)
    assert isinstance(sparse[1], CSRLinear) and isinstance(sparse[3], CSRLinear)
    assert type(model[1]) is nn.Linear  # the model itself is left as it was
    assert sparse[1].weight.layout == torch.sparse_csr
    assert sparse[1].weight.values().numel() == int((model[1].weight != 0).sum())  # zeros not stored
    x = torch.randn(5, 3, 4)
    with torch.no_grad():
        assert torch.allclose(sparse(x), model(x), atol=1e-6)
        assert torch.allclose(sparse(x[:1]), model(x[:1]), atol=1e-6)
