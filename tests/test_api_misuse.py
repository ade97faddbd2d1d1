"""The method's API refuses what would silently train nothing or the wrong thing, with a
ValueError naming the argument; frozen parameters are neither trained, regularized nor pruned."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sensreg import Masks, PruneContext, SensitivityStep, prunable_names, prune_schedule


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def test_an_optimizer_over_another_models_parameters_is_refused():
    model = mlp()
    other = torch.optim.SGD(copy.deepcopy(model).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="optimizer: it does not step this model's parameters"):
        SensitivityStep(model, other, "spec")


def test_masks_built_on_another_model_are_refused():
    model = mlp()
    copy_masks = Masks(copy.deepcopy(model), prunable_names(model, "all"))
    with pytest.raises(ValueError, match="masks: .* are not this model's parameters"):
        SensitivityStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "spec", masks=copy_masks)


@pytest.mark.parametrize("kwargs, match", [
    ({"reduction": "samples"}, "reduction='samples' is not one of batch, sample"),
    ({"regularize": ["2.weight", "9.weight"]}, "regularize names 9.weight"),
])
def test_misspelt_arguments_are_refused(kwargs, match):
    model = mlp()
    with pytest.raises(ValueError, match=match):
        SensitivityStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "spec", **kwargs)


def test_an_unknown_variant_is_refused():
    model = mlp()
    with pytest.raises(ValueError, match="specc"):
        SensitivityStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "specc")


def test_gmp_without_steps_per_epoch_is_refused():
    model = mlp()
    masks = Masks(model, prunable_names(model, "all"))
    gmp = prune_schedule("gmp", 2, target="2x")
    ctx = PruneContext(model, masks, None, validate=lambda: {"loss": 0.0, "error": 0.0})  # steps_per_epoch left 0
    with pytest.raises(ValueError, match="steps_per_epoch=0"):
        gmp.after_step(1, 0, ctx)


def test_frozen_parameters_are_neither_trained_regularized_nor_pruned():
    model = mlp()
    model[0].requires_grad_(False)  # a frozen first layer, as a frozen backbone
    frozen = copy.deepcopy(model[0].state_dict())
    assert prunable_names(model, "all") == ["2.weight", "2.bias"]
    step = SensitivityStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "spec")
    x, y = batch()
    before = model[2].weight.detach().clone()
    for _ in range(3):
        step(x, y, lam=0.1)
    assert all(torch.equal(v, frozen[k]) for k, v in model[0].state_dict().items())
    assert not torch.equal(model[2].weight, before)  # the rest trains
