"""Masks, the threshold search and the sparsity statistics."""

from __future__ import annotations

import functools
import json
from importlib import resources

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sensreg.run import lifecycle as run_module
from sensreg.records.checkpoint import load_checkpoint
from sensreg.run.config import TrainConfig
from sensreg.run.interrupt import Interrupted
from sensreg.models import build_model
from sensreg.method.prune_schedules import PRUNE_SCHEDULES, build_prune_schedule
from sensreg.method.pruning import Masks, layer_macs_per_weight, prunable_names, search_threshold, sparsity_stats
from sensreg.run.lifecycle import resume_state, train
from sensreg.method.sensitivity import get_variant
from sensreg.method.step import StepSettings
from sensreg.run.loop import TrainStep
from sensreg.records.train_state import load_training_state

from conftest import assert_same_run, composed, config, metrics_without_time, random_batch, stop_at_step

pytestmark = pytest.mark.usefixtures("single_thread")


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


data = functools.partial(random_batch, 32, (6,), 3)  # data(seed=0): 32 inputs for small_net, 3 classes


# --- prunable_names ---------------------------------------------------------------------------------

def test_prunable_names():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    assert prunable_names(model, "all") == ["0.weight", "0.bias", "3.weight", "3.bias"]  # batch norm left out
    assert prunable_names(model, "all", batchnorm=True) == ["0.weight", "0.bias", "1.weight", "1.bias",
                                                            "3.weight", "3.bias"]
    assert prunable_names(model, "weights") == prunable_names(model, "weights", batchnorm=True) == ["0.weight", "3.weight"]
    with pytest.raises(ValueError) as err:
        prunable_names(model, "kernels")
    assert "kernels" in str(err.value) and "all" in str(err.value) and "weights" in str(err.value)


# --- Masks ------------------------------------------------------------------------------------------

def test_prune_below_zeroes_exactly_the_small_entries():
    model = small_net()
    names = prunable_names(model, "all")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = Masks(model, names)
    assert masks.kept() == masks.total() == 6 * 8 + 8 + 8 * 3 + 3
    assert masks.remaining_pct() == 100.0 and not masks.active

    threshold = 0.2
    expected_pruned = sum(int((w.abs() < threshold).sum()) for w in before.values())
    assert 0 < expected_pruned < masks.total()
    assert masks.prune_below_(threshold) == expected_pruned
    assert masks.active
    for (n, p), m in zip(model.named_parameters(), masks.masks):
        small = before[n].abs() < threshold
        assert torch.equal(m, ~small)
        assert bool((p[small] == 0).all())
        assert torch.equal(p[~small], before[n][~small])  # kept entries untouched
    assert masks.kept() == masks.total() - expected_pruned
    assert masks.remaining_pct() == pytest.approx(100.0 * masks.kept() / masks.total(), rel=1e-15)

    # pruning again at the same threshold prunes nothing new; a larger one prunes the difference
    assert masks.prune_below_(threshold) == 0
    more = sum(int(((w.abs() >= threshold) & (w.abs() < 0.3)).sum()) for w in before.values())
    assert masks.prune_below_(0.3) == more
    assert masks.kept() == sum(int((w.abs() >= 0.3).sum()) for w in before.values())
    mags = masks.kept_magnitudes()
    assert mags.numel() == masks.kept() and bool((mags[1:] >= mags[:-1]).all()) and float(mags[0]) >= 0.3


def test_prune_below_only_touches_listed_parameters():
    model = small_net()
    masks = Masks(model, prunable_names(model, "weights"))
    bias_before = [model[0].bias.detach().clone(), model[2].bias.detach().clone()]
    masks.prune_below_(10.0)  # everything in the weights
    assert masks.kept() == 0 and masks.remaining_pct() == 0.0
    assert bool((model[0].weight == 0).all()) and bool((model[2].weight == 0).all())
    assert torch.equal(model[0].bias, bias_before[0]) and torch.equal(model[2].bias, bias_before[1])


def test_prune_nothing_leaves_masks_inactive():
    model = small_net()
    masks = Masks(model, prunable_names(model, "all"))
    assert masks.prune_below_(0.0) == 0
    assert not masks.active


def _optimizer(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True)
    return torch.optim.Adam(params, lr=0.01)


STATE_KEYS = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq")}


@pytest.mark.parametrize("sens_name", ["spec", "l2", "loss"])
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_pruned_entries_stay_exactly_zero_through_training(kind, sens_name):
    model = small_net()
    x, y = data()
    names = prunable_names(model, "all")
    masks = Masks(model, names)
    opt = _optimizer(kind, model.parameters())
    step = TrainStep(model, opt, masks, StepSettings(get_variant(sens_name), names))
    for _ in range(5):  # build up momentum / moments first
        step(x, y, 0.01)
    for p in model.parameters():
        for key in STATE_KEYS[kind]:
            assert bool((opt.state[p][key] != 0).any())

    newly = masks.prune_below_(0.15, opt)
    assert newly > 10
    pruned = [~m for m in masks.masks]
    for p, gone in zip(masks.params, pruned):
        assert bool((p[gone] == 0).all())
        for key in STATE_KEYS[kind]:
            assert bool((opt.state[p][key][gone] == 0).all())
    kept_before = [p.detach().clone() for p in masks.params]

    for i in range(30):
        x_i, y_i = data(seed=i + 1)
        step(x_i, y_i, 0.01)
    for p, gone, old in zip(masks.params, pruned, kept_before):
        assert bool((p[gone] == 0).all()), "a pruned weight came back"
        for key in STATE_KEYS[kind]:
            assert bool((opt.state[p][key][gone] == 0).all()), f"{key} nonzero at a pruned entry"
        # training goes on for the kept entries
        assert not torch.equal(p[~gone], old[~gone])
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert masks.kept() == masks.total() - newly


def test_pruned_entries_get_no_gradient_update_with_adam_fresh_state():
    """Pruning before the optimizer has any state, then stepping: Adam state is created with
    zero gradients at pruned entries, so nothing moves there."""
    model = small_net()
    x, y = data()
    names = prunable_names(model, "weights")
    masks = Masks(model, names)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    masks.prune_below_(0.2, opt)
    step = TrainStep(model, opt, masks, StepSettings(get_variant("unspec"), names))
    for _ in range(10):
        step(x, y, 0.05)
    for p, m in zip(masks.params, masks.masks):
        assert bool((p[~m] == 0).all())
        assert bool((opt.state[p]["exp_avg"][~m] == 0).all())
        assert bool((opt.state[p]["exp_avg_sq"][~m] == 0).all())


class DriftingSGD(torch.optim.Optimizer):
    """Plain SGD that also adds a constant to every entry: an optimizer that moves a weight even
    when its gradient and state are zero (as weight decay variants or noise injection might)."""

    def __init__(self, params, lr=0.1, drift=0.01):
        super().__init__(params, dict(lr=lr, drift=drift))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"]).add_(group["drift"])


def test_pruned_entries_are_reapplied_after_every_step():
    model = small_net()
    x, y = data()
    names = prunable_names(model, "weights")
    masks = Masks(model, names)
    opt = DriftingSGD(model.parameters())
    masks.prune_below_(0.2, opt)
    step = TrainStep(model, opt, masks, StepSettings(get_variant("spec"), names))
    for _ in range(3):
        step(x, y, 0.01)
    for p, m in zip(masks.params, masks.masks):
        assert bool((p[~m] == 0).all())
    assert bool((model[0].bias != 0).all())  # not prunable here, so it drifts freely


def test_masks_state_dict_round_trip():
    model = small_net()
    masks = Masks(model, prunable_names(model, "weights"))
    masks.prune_below_(0.2)
    state = masks.state_dict()
    assert list(state) == ["0.weight", "2.weight"]
    assert all(s.dtype == torch.bool for s in state.values())
    for s, m in zip(state.values(), masks.masks):
        assert torch.equal(s, m) and s.data_ptr() != m.data_ptr()  # a copy

    other = small_net(seed=1)  # different weights, same shapes
    restored = Masks(other, prunable_names(other, "weights"))
    assert not restored.active
    restored.load_state_dict({k: v.to(torch.uint8) for k, v in state.items()})  # any 0/1 dtype
    assert restored.active
    for a, b in zip(restored.masks, masks.masks):
        assert torch.equal(a, b) and a.dtype == torch.bool
    assert restored.kept() == masks.kept()
    restored.apply_()
    for p, m in zip(restored.params, restored.masks):
        assert bool((p[~m] == 0).all()) and bool((p[m] != 0).all())

    state["0.weight"][:] = False  # the saved copy does not alias the live masks
    assert masks.kept() > 0 and bool(masks.masks[0].any())

    dense = Masks(small_net(), prunable_names(model, "weights"))
    dense.load_state_dict({k: torch.ones_like(v) for k, v in state.items()})
    assert not dense.active


def test_mask_gradients():
    model = small_net()
    masks = Masks(model, prunable_names(model, "weights"))
    grads = [torch.ones_like(p) for p in masks.params]
    masks.mask_(grads)  # inactive: untouched
    assert all(bool((g == 1).all()) for g in grads)
    masks.prune_below_(0.2)
    masks.mask_(grads)
    for g, m in zip(grads, masks.masks):
        assert torch.equal(g, m.float())


# --- search_threshold ----------------------------------------------------------------------------------

def sorted_magnitudes(n=50, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g, dtype=dtype).sort().values


def count_pruned(magnitudes, threshold):
    return int((magnitudes < threshold).sum())


def largest_acceptable_count(magnitudes, loss_of_count, bound):
    """Brute force: the most entries (smallest first) that can go with loss <= bound."""
    return max(k for k in range(magnitudes.numel() + 1) if loss_of_count(k) <= bound)


class Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, threshold):
        self.calls.append(threshold)
        return self.fn(threshold)


@pytest.mark.parametrize("tolerance", [0.0, 0.01, 0.1, 0.5, 3.0])
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_search_returns_largest_acceptable_threshold_sum_of_pruned(n, tolerance):
    mags = sorted_magnitudes(n)
    base = 2.0

    def loss_of_count(k):
        return base + float(mags[:k].sum())

    loss = Counted(lambda T: base + float(mags[mags < T].sum()))
    result = search_threshold(mags, loss, base, tolerance)
    bound = (1 + tolerance) * base
    k_best = largest_acceptable_count(mags, loss_of_count, bound)
    if k_best == 0:
        assert result.threshold == 0.0
        assert result.loss_after == base
    else:
        assert count_pruned(mags, result.threshold) == k_best
        # the threshold is the smallest value that prunes k_best entries: the next magnitude up
        # (or just above the largest), so |w| < T prunes exactly those
        assert result.threshold > float(mags[k_best - 1])
        if k_best < n:
            assert result.threshold == float(mags[k_best])
        assert result.loss_after == pytest.approx(loss_of_count(k_best), rel=1e-12)
    assert result.loss_before == base
    assert result.evaluations == len(loss.calls)
    assert result.evaluations <= (n + 1).bit_length() + 1


def test_search_step_loss():
    mags = sorted_magnitudes(40)
    cut = float(mags[23])  # pruning the 23 smallest is free, the 24th costs a lot

    result = search_threshold(mags, lambda T: 1.0 if T <= cut else 10.0, 1.0, tolerance=0.0)
    assert count_pruned(mags, result.threshold) == 23
    assert result.threshold == cut
    assert result.loss_after == 1.0


def test_search_prunes_everything_when_loss_never_grows():
    mags = sorted_magnitudes(20)
    result = search_threshold(mags, lambda T: 1.0, 1.0, tolerance=0.0)
    assert count_pruned(mags, result.threshold) == 20
    assert result.threshold > float(mags[-1])


def test_search_never_tries_a_threshold_above_the_limit():
    mags = sorted_magnitudes(50)
    limit = float(mags[30])
    loss = Counted(lambda T: 1.0)  # nothing ever hurts: only the limit stops the search
    result = search_threshold(mags, loss, 1.0, tolerance=0.0, limit=limit)
    assert count_pruned(mags, result.threshold) == 30  # everything below the limit, nothing more
    assert all(T <= limit for T in loss.calls)


def test_a_chance_level_network_is_never_pruned_to_an_empty_layer(tmp_path):
    """An untrained network is no better than chance, so pruning hardly changes its loss; the
    search must still keep every weight tensor connected."""
    cfg = config(model={"name": "lenet300"}, optim={"lr": 1e-7},  # it stays at its random start
                 trainer={"epochs": 2}, prune={"name": "search", "patience": 0, "tolerance": 0.5})
    summary = train(cfg, tmp_path)
    assert summary["thresholds"]  # the search pruned
    layers = {l["name"]: l for l in summary["sparsity"]["layers"]}
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        assert layers[name]["remaining_pct"] > 0, name


def test_masks_emptying_threshold_is_the_smallest_largest_weight():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
        model[0].weight[0, 0] = 2.0
        model[1].weight.fill_(0.1)
        model[1].weight[1, 2] = -0.7
        model[1].bias.fill_(0.01)  # vectors do not count: an empty bias cuts nothing off
    masks = Masks(model, prunable_names(model, "all"))
    assert masks.emptying_threshold() == pytest.approx(0.7)
    masks.prune_below_(0.6)  # keeps 2.0 in the first layer and -0.7 in the second
    assert masks.emptying_threshold() == pytest.approx(0.7)


def test_search_returns_zero_when_any_pruning_hurts():
    mags = sorted_magnitudes(30)
    loss = Counted(lambda T: 1.0 if T <= float(mags[0]) else 1.0 + 1e-9)
    result = search_threshold(mags, loss, 1.0, tolerance=0.0)
    assert result.threshold == 0.0
    assert result.loss_after == 1.0 and result.loss_before == 1.0
    assert 1 <= result.evaluations == len(loss.calls)


def test_search_respects_max_evaluations():
    mags = sorted_magnitudes(1000)

    def loss_fn(T):
        return 1.0 + float(mags[mags < T].sum()) / 1000

    bound_tol = 0.05
    for limit in (0, 1, 3, 5):
        loss = Counted(loss_fn)
        result = search_threshold(mags, loss, 1.0, bound_tol, max_evaluations=limit)
        assert len(loss.calls) == result.evaluations <= limit
        if result.threshold > 0:  # whatever it returns is acceptable
            assert loss_fn(result.threshold) <= 1.05
            assert result.loss_after == loss_fn(result.threshold)
    assert search_threshold(mags, Counted(loss_fn), 1.0, bound_tol, max_evaluations=0).threshold == 0.0
    # enough evaluations: the optimum
    full = search_threshold(mags, loss_fn, 1.0, bound_tol, max_evaluations=40)
    best = largest_acceptable_count(mags, lambda k: 1.0 + float(mags[:k].sum()) / 1000, 1.05)
    assert count_pruned(mags, full.threshold) == best


def test_search_with_no_candidates():
    loss = Counted(lambda T: 0.0)
    result = search_threshold(torch.empty(0), loss, 0.7, 0.1)
    assert (result.threshold, result.loss_before, result.loss_after, result.evaluations) == (0.0, 0.7, 0.7, 0)
    assert loss.calls == []


def test_search_on_a_real_model():
    """A linear classifier fitted to a sparse teacher: the search really evaluates the model."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(3, 12, generator=g) * (torch.rand(3, 12, generator=g) < 0.3)
    x_train, x_val = torch.randn(300, 12, generator=g), torch.randn(200, 12, generator=g)
    y_train, y_val = (x_train @ teacher.T).argmax(1), (x_val @ teacher.T).argmax(1)
    torch.manual_seed(0)
    model = nn.Linear(12, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x_train), y_train).backward()
        opt.step()

    masks = Masks(model, prunable_names(model, "weights"))
    saved = [p.detach().clone() for p in masks.params]

    @torch.no_grad()
    def val_loss():
        return float(F.cross_entropy(model(x_val), y_val))

    @torch.no_grad()
    def loss_with(threshold):
        for p, s in zip(masks.params, saved):
            p.copy_(s * (s.abs() >= threshold))
        loss = val_loss()
        for p, s in zip(masks.params, saved):
            p.copy_(s)
        return loss

    before = val_loss()
    tolerance = 0.05
    mags = masks.kept_magnitudes()
    result = search_threshold(mags, loss_with, before, tolerance)
    bound = (1 + tolerance) * before
    assert result.threshold > 0
    assert torch.equal(model.weight, saved[0])  # the search left the model as it was
    assert result.loss_after <= bound
    assert result.loss_after == pytest.approx(loss_with(result.threshold), rel=1e-12)
    k = count_pruned(mags, result.threshold)
    assert 0 < k < mags.numel()
    # bisection's guarantee: the next candidate up is not acceptable
    above = float(mags[k + 1]) if k + 1 < mags.numel() else 2 * float(mags[-1])
    assert loss_with(above) > bound
    # and on this problem the loss grows with T, so it is the global optimum too
    counts = [loss_with(float(mags[j])) for j in range(mags.numel())] + [loss_with(float(mags[-1]) * 2)]
    k_best = max(j for j, v in enumerate(counts) if v <= bound)
    assert k == k_best

    pruned = masks.prune_below_(result.threshold)
    assert pruned == k
    assert val_loss() == pytest.approx(result.loss_after, rel=1e-12)


# --- sparsity_stats and FLOPs -------------------------------------------------------------------------

def zeros_model():
    """Conv2d(1->2, 3x3, stride 2, pad 1) on 1x6x6 (3x3 = 9 output positions), Linear(18->3)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1.0 + torch.rand_like(p))  # no accidental zeros
        conv_w = model[0].weight.view(-1)  # 18 entries
        conv_w[[0, 3, 4, 10, 17]] = 0.0  # 5 zeros -> 13 left
        model[0].bias[1] = 0.0  # 1 of 2
        lin_w = model[3].weight.view(-1)  # 54 entries
        lin_w[torch.arange(0, 54, 6)] = 0.0  # 9 zeros -> 45 left
    return model


def test_layer_macs_per_weight():
    model = zeros_model()
    assert layer_macs_per_weight(model, (1, 6, 6)) == {"0.weight": 9, "3.weight": 1}

    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv1d(2, 4, 3))  # length 10 -> 8
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            return self.head(self.block(x).flatten(1))

    assert layer_macs_per_weight(Nested(), (2, 10)) == {"block.0.weight": 8, "head.weight": 1}


def test_sparsity_stats_counts_by_hand():
    model = zeros_model().double().train()
    stats = sparsity_stats(model, (1, 6, 6), ["0.weight", "3.weight"])
    assert model.training  # mode restored
    rows = {r["name"]: r for r in stats["layers"]}
    assert list(rows) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    expected = {  # name: (shape, params, nonzero, flops_dense, flops_remaining, prunable)
        "0.weight": ([2, 1, 3, 3], 18, 13, 18 * 9, 13 * 9, True),
        "0.bias": ([2], 2, 1, 0, 0, False),
        "3.weight": ([3, 18], 54, 45, 54, 45, True),
        "3.bias": ([3], 3, 3, 0, 0, False),
    }
    for name, (shape, params, nonzero, fd, fr, prunable) in expected.items():
        r = rows[name]
        assert (r["shape"], r["params"], r["nonzero"], r["flops_dense"], r["flops_remaining"], r["prunable"]) == (
            shape, params, nonzero, fd, fr, prunable), name
        assert r["remaining_pct"] == pytest.approx(100.0 * nonzero / params, rel=1e-15)
        assert r["compression"] == pytest.approx(params / nonzero, rel=1e-15)

    assert stats["prunable"]["params"] == 72 and stats["prunable"]["nonzero"] == 58
    assert stats["prunable"]["remaining_pct"] == pytest.approx(100 * 58 / 72, rel=1e-15)
    assert stats["prunable"]["compression"] == pytest.approx(72 / 58, rel=1e-15)
    assert stats["all"]["params"] == 77 and stats["all"]["nonzero"] == 62
    assert stats["all"]["remaining_pct"] == pytest.approx(100 * 62 / 77, rel=1e-15)
    assert stats["all"]["compression"] == pytest.approx(77 / 62, rel=1e-15)
    assert stats["flops"]["dense"] == 162 + 54 == 216
    assert stats["flops"]["remaining"] == 117 + 45 == 162
    assert stats["flops"]["remaining_pct"] == pytest.approx(100 * 162 / 216, rel=1e-15)


def test_sparsity_stats_fully_pruned_layer():
    model = zeros_model()
    with torch.no_grad():
        model[3].weight.zero_()
    stats = sparsity_stats(model, (1, 6, 6), ["0.weight", "3.weight"])
    row = next(r for r in stats["layers"] if r["name"] == "3.weight")
    assert row["nonzero"] == 0 and row["remaining_pct"] == 0.0 and row["flops_remaining"] == 0
    assert row["compression"] == 54  # params / max(1, 0)
    assert stats["flops"]["remaining"] == 117


@pytest.mark.parametrize("name, params, weights, flops, layer_flops", [
    ("lenet300", 266_610, 266_200, 784 * 300 + 300 * 100 + 100 * 10,
     {"fc1.weight": 235_200, "fc2.weight": 30_000, "fc3.weight": 1_000}),
    # conv1: 20*1*5*5 = 500 weights x 24*24 positions; conv2: 50*20*5*5 = 25,000 x 8*8;
    # fc1: 800*500; fc2: 500*10
    ("lenet5", 431_080, 430_500, 500 * 576 + 25_000 * 64 + 400_000 + 5_000,
     {"conv1.weight": 288_000, "conv2.weight": 1_600_000, "fc1.weight": 400_000, "fc2.weight": 5_000}),
])
def test_lenet_sizes_and_dense_flops(name, params, weights, flops, layer_flops):
    model = build_model(name, 10, (1, 28, 28))
    assert sum(p.numel() for p in model.parameters()) == params
    stats = sparsity_stats(model, (1, 28, 28), prunable_names(model, "weights"))
    assert stats["all"]["params"] == params and stats["all"]["nonzero"] == params
    assert stats["prunable"]["params"] == weights
    assert stats["flops"]["dense"] == stats["flops"]["remaining"] == flops
    assert {r["name"]: r["flops_dense"] for r in stats["layers"] if r["flops_dense"]} == layer_flops
    assert stats["flops"]["remaining_pct"] == 100.0

    masks = Masks(model, prunable_names(model, "weights"))
    masks.prune_below_(0.02)
    stats = sparsity_stats(model, (1, 28, 28), masks.names)
    assert stats["prunable"]["nonzero"] == masks.kept()
    assert stats["all"]["nonzero"] == masks.kept() + (params - weights)
    positions = layer_macs_per_weight(model, (1, 28, 28))
    assert stats["flops"]["remaining"] == sum(
        positions[n] * int(m.sum()) for n, m in zip(masks.names, masks.masks))


# --- prune.scope=layer: thresholds τ·σ_l per tensor -----------------------------------------------

def pstdev(values) -> float:
    """The population standard deviation, the plain Python way (shares nothing with torch.std)."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def two_scales(seed: int = 0) -> nn.Module:
    """Two weight tensors of very different scales: ~N(0, 1) and ~N(0, 0.01²)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(40, 50, bias=False), nn.Linear(50, 30, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0.0, 1.0)
        model[1].weight.normal_(0.0, 0.01)
    return model


def test_global_scope_is_one_threshold_and_unchanged():
    model = small_net()
    masks = Masks(model, prunable_names(model, "all"))
    assert masks.scales("global") == [1.0] * 4
    assert masks.scaled_thresholds(0.2, masks.scales("global")) == [0.2] * 4
    other = Masks(small_net(), prunable_names(model, "all"))
    assert masks.prune_below_(0.2) == other.prune_below_([0.2] * 4) > 0  # a list of equal ones: the same
    assert all(torch.equal(a, b) for a, b in zip(masks.masks, other.masks))
    with pytest.raises(ValueError, match="3 thresholds for 4 tensors"):
        masks.prune_below_([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="unknown threshold scope 'bogus'; known: global, layer"):
        masks.scales("bogus")


def test_layer_scope_prunes_each_tensor_below_tau_times_its_own_std():
    model = two_scales()
    weights = [model[0].weight.detach().clone(), model[1].weight.detach().clone()]
    sigmas = [pstdev(w.flatten().tolist()) for w in weights]
    assert sigmas[0] == pytest.approx(1.0, rel=0.05) and sigmas[1] == pytest.approx(0.01, rel=0.05)

    # A global threshold that suits the large tensor removes nearly all of the small one.
    masks = Masks(two_scales(), prunable_names(model, "weights"))
    masks.prune_below_(0.05)
    gone = [1 - float(m.float().mean()) for m in masks.masks]
    assert gone[0] < 0.06 and gone[1] > 0.99

    # The same τ·σ rule per tensor: the fraction each tensor loses is its own, predicted entry by
    # entry from |w| < τ·std(kept entries), and about P(|z| < τ) = 38 % for a normal at τ = 0.5.
    masks = Masks(model, prunable_names(model, "weights"))
    scales = masks.scales("layer")
    assert scales == pytest.approx(sigmas, rel=1e-12)
    tau = 0.5
    thresholds = masks.scaled_thresholds(tau, scales)
    assert thresholds == pytest.approx([tau * s for s in sigmas], rel=1e-12)
    expected = [w.abs() < tau * s for w, s in zip(weights, sigmas)]
    assert masks.prune_below_(thresholds) == sum(int(e.sum()) for e in expected)
    for m, e, w, p in zip(masks.masks, expected, weights, masks.params):
        assert torch.equal(m, ~e)
        assert bool((p[e] == 0).all()) and torch.equal(p[~e], w[~e])
        assert float(e.float().mean()) == pytest.approx(0.383, abs=0.04)


def test_layer_scales_use_only_the_kept_entries():
    model = two_scales()
    original = [p.detach().clone() for p in model.parameters()]
    masks = Masks(model, prunable_names(model, "weights"))
    masks.prune_below_([0.8, 0.0])  # the first tensor loses its entries below 0.8, the second none
    kept = [p.detach()[m] for p, m in zip(masks.params, masks.masks)]
    assert 0.4 < 1 - kept[0].numel() / masks.params[0].numel() < 0.65
    sigma_kept = pstdev(kept[0].tolist())
    sigma_all = pstdev(masks.params[0].detach().flatten().tolist())  # with the pruned zeros
    assert sigma_kept > 1.2 * sigma_all  # the difference the rule must see
    scales = masks.scales("layer")
    assert scales == pytest.approx([sigma_kept, pstdev(kept[1].tolist())], rel=1e-12)
    # the candidate values: |w| / σ of the kept entries only
    normalized = masks.kept_magnitudes(scales)
    assert normalized.dtype == torch.float64 and normalized.numel() == masks.kept()
    assert torch.allclose(normalized, torch.cat([k.abs().double() / s for k, s in zip(kept, scales)]).sort().values,
                          rtol=1e-15, atol=0)

    before = [m.clone() for m in masks.masks]
    tau = 1.0
    masks.prune_below_(masks.scaled_thresholds(tau, scales))
    for w, m0, m, s in zip(original, before, masks.masks, (sigma_kept, scales[1])):
        assert torch.equal(m, m0 & ~(w.abs() < tau * s))
    assert int((before[0] & ~masks.masks[0]).sum()) > 0  # entries above 0.8 but below σ_kept went too


def test_layer_scope_leaves_tensors_without_spread_alone():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(12.0).view(3, 4) - 5.5)
        model[0].bias.fill_(0.3)  # all equal: σ = 0
        model[1].weight.fill_(0.01)
        model[1].weight[0, 0] = 0.9  # one entry survives the first cut
        model[1].bias.zero_()  # a bias at its initial zero: σ = 0 too
    masks = Masks(model, prunable_names(model, "all"))
    masks.prune_below_([0.0, 0.0, 0.5, 0.0, 1e9, 1e9])  # 1.weight keeps 0.9 only; 2.* lose everything
    assert [int(m.sum()) for m in masks.masks] == [12, 3, 1, 2, 0, 0]
    scales = masks.scales("layer")
    assert scales[0] == pytest.approx(pstdev(range(12)), rel=1e-12)
    assert scales[1:] == [0.0] * 5  # equal entries, one entry, or none: no spread, and no nan
    before = [p.detach().clone() for p in masks.params]
    assert masks.prune_below_(masks.scaled_thresholds(1e9, scales)) == 12  # only the tensor with spread
    assert torch.equal(masks.params[1], before[1]) and torch.equal(masks.params[2], before[2])
    assert torch.equal(masks.params[3], before[3])
    assert masks.kept_magnitudes(masks.scales("layer")).numel() == 0  # nothing left to search over
    assert masks.emptying_threshold(masks.scales("layer")) == float("inf")


def scope_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        for layer, scale in zip(model[::2], (1.0, 0.05, 3.0)):
            layer.weight.mul_(scale)
    return model


def brute_force_layer_search(weights: list[Tensor], is_matrix: list[bool], loss_of_pruned, bound: float):
    """Every candidate τ (the sorted |w|/σ_l, σ_l the population std in plain Python), pruning
    the entries with |w|/σ_l < τ, none above the smallest largest |w|/σ_l of the matrices; the
    largest τ whose loss is within bound, and what it prunes (False: pruned)."""
    sigmas = [pstdev(w.flatten().tolist()) for w in weights]
    normalized = [w.abs().double() / s for w, s in zip(weights, sigmas)]
    limit = min(float(v.max()) for v, matrix in zip(normalized, is_matrix) if matrix)
    candidates = sorted(float(x) for v in normalized for x in v.flatten())
    best, best_kept = 0.0, [torch.ones_like(w, dtype=torch.bool) for w in weights]
    for tau in candidates:
        if tau > limit:
            break
        kept = [v >= tau for v in normalized]
        if loss_of_pruned(kept) <= bound:
            best, best_kept = tau, kept
    return best, best_kept, sigmas


def fake_validation(model: nn.Module, names: list[str]):
    """A validation pass for ``_search_and_prune`` whose loss grows with every entry pruned (a
    zero where ``model`` had none), at a different cost per tensor; returns it, that loss as a
    function of the kept masks, the original weights and the list of evaluations."""
    original = [p.detach().clone() for n, p in model.named_parameters() if n in names]
    cost = [3.0, 1.0, 40.0, 5.0, 0.5, 2.0]  # per tensor, per unit of |w| pruned
    evaluated = []

    def loss_of_pruned(kept):
        return 1.0 + sum(c * float(w.abs()[~k].double().sum()) for c, w, k in zip(cost, original, kept))

    def validate():
        evaluated.append(1)
        params = dict(model.named_parameters())
        return {"loss": loss_of_pruned([params[n].detach() != 0 for n in names]), "error": 0.0}

    return validate, loss_of_pruned, original, evaluated


@pytest.mark.parametrize("tolerance", [0.02, 0.2, 1e6])
def test_layer_search_finds_the_largest_tau_within_tolerance(tolerance):
    """``_search_and_prune`` with scope=layer, its validation loss faked from what it pruned,
    against a brute-force scan over every candidate τ."""
    from sensreg.method.prune_schedules import search_and_prune as _search_and_prune

    model = scope_net()
    masks = Masks(model, prunable_names(model, "all"))
    validate, loss_of_pruned, original, evaluated = fake_validation(model, masks.names)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    found = _search_and_prune(masks, opt, validate, 1.0, tolerance, epoch=3, scope="layer")
    tau, kept, sigmas = brute_force_layer_search(original, [p.dim() > 1 for p in original], loss_of_pruned,
                                                 (1 + tolerance) * 1.0)
    assert tau > 0 and found is not None
    assert found["threshold"] == pytest.approx(tau, rel=1e-12)
    assert found["scope"] == "layer" and found["epoch"] == 3
    assert list(found["layer_thresholds"]) == masks.names
    assert list(found["layer_thresholds"].values()) == pytest.approx([found["threshold"] * s for s in sigmas],
                                                                      rel=1e-12)
    for m, k in zip(masks.masks, kept):
        assert torch.equal(m, k)  # it pruned exactly what the brute force found best
    for p, m, w in zip(masks.params, masks.masks, original):
        assert bool((p[~m] == 0).all()) and torch.equal(p[m], w[m])
    assert found["pruned"] == sum(int((~k).sum()) for k in kept) > 0
    assert found["val_loss_after"] == pytest.approx(loss_of_pruned(kept), rel=1e-12)  # applied = evaluated
    assert found["val_loss_after"] <= (1 + tolerance) * 1.0
    assert found["evaluations"] == len(evaluated) <= masks.total().bit_length() + 1
    if tolerance == 1e6:  # nothing hurts enough: only the rule that never empties a matrix stops it
        assert min(int(m.sum()) for m, p in zip(masks.masks, masks.params) if p.dim() > 1) == 1
    # and the same with scope=global: a different decision, recorded without layer thresholds
    fresh = scope_net()
    fresh_masks = Masks(fresh, prunable_names(fresh, "all"))
    validate = fake_validation(fresh, fresh_masks.names)[0]
    found_global = _search_and_prune(fresh_masks, None, validate, 1.0, tolerance, epoch=3)
    assert found_global["scope"] == "global" and "layer_thresholds" not in found_global
    assert any(not torch.equal(a, b) for a, b in zip(fresh_masks.masks, kept))


def test_layer_candidates_prune_exactly_the_smaller_entries():
    """For float32 weights the i-th candidate τ_i = |w_i| / σ_l (``kept_magnitudes``), turned
    into the thresholds τ_i·σ per tensor, prunes exactly the i entries of smaller |w|/σ: the
    entries of tensor l below w_i, never w_i itself."""
    model = scope_net(seed=3)
    masks = Masks(model, prunable_names(model, "all"))
    scales = masks.scales("layer")
    candidates = masks.kept_magnitudes(scales)
    assert candidates.numel() == masks.total() and bool((candidates[1:] > candidates[:-1]).all())  # no ties
    for i, tau in enumerate(candidates.tolist()):
        pruned = sum(int((p.detach().abs() < t).sum())
                     for p, t in zip(masks.params, masks.scaled_thresholds(tau, scales)))
        assert pruned == i


def test_layer_search_never_empties_a_weight_tensor():
    model = scope_net(seed=1)
    masks = Masks(model, prunable_names(model, "all"))
    for _ in range(3):  # searches in a row; a loss that nothing hurts
        scales = masks.scales("layer")
        limit = masks.emptying_threshold(scales)
        ratios = [float(p.detach()[m].abs().max()) / s for p, m, s in zip(masks.params, masks.masks, scales)
                  if p.dim() > 1 and s > 0]
        assert limit == pytest.approx(min(ratios, default=float("inf")), rel=1e-12)
        loss = Counted(lambda tau: 1.0)
        result = search_threshold(masks.kept_magnitudes(scales), loss, 1.0, 0.0, limit=limit)
        assert all(tau <= limit for tau in loss.calls)
        masks.prune_below_(masks.scaled_thresholds(result.threshold, scales))
        assert all(int(m.sum()) >= 1 for m, p in zip(masks.masks, masks.params) if p.dim() > 1)
    # The tensor that set the limit keeps its largest entry alone, and then has no spread left.
    assert sorted(int(m.sum()) for m, p in zip(masks.masks, masks.params) if p.dim() > 1)[0] == 1
    assert 0.0 in masks.scales("layer")


@pytest.mark.parametrize("batchnorm", [False, True])
def test_layer_scope_with_and_without_batch_norm(batchnorm):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([1.0, 0.2, 1.5, 0.9]))
        model[1].bias.copy_(torch.tensor([0.05, -0.4, 0.3, -0.01]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = prunable_names(model, "all", batchnorm=batchnorm)
    assert ("1.weight" in names) == ("1.bias" in names) == batchnorm
    masks = Masks(model, names)
    scales = masks.scales("layer")
    assert scales == pytest.approx([pstdev(before[n].flatten().tolist()) for n in names], rel=1e-12)
    tau = 0.9
    masks.prune_below_(masks.scaled_thresholds(tau, scales))
    params = dict(model.named_parameters())
    for n in before:
        if n in names:  # each by its own σ
            pruned = before[n].abs() < tau * pstdev(before[n].flatten().tolist())
            assert torch.equal(params[n] == 0, pruned), n
        else:
            assert torch.equal(params[n], before[n]), n
    if batchnorm:  # σ(gain) = 0.47: 0.2 goes; σ(offset) = 0.27: 0.05 and -0.01 go
        assert params["1.weight"].tolist() == pytest.approx([1.0, 0.0, 1.5, 0.9])
        assert params["1.bias"].tolist() == pytest.approx([0.0, -0.4, 0.3, 0.0])
    # Fresh batch norm: gains all 1, offsets all 0, no spread: the rule leaves them alone.
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3))
    fresh_masks = Masks(fresh, prunable_names(fresh, "all", batchnorm=True))
    fresh_masks.prune_below_(fresh_masks.scaled_thresholds(100.0, fresh_masks.scales("layer")))
    assert bool((fresh[1].weight == 1).all()) and not bool(fresh[0].weight.any())


def test_a_run_with_layer_thresholds(tmp_path):
    cfg = config(sens={"name": "spec", "lam": 1e-3}, trainer={"epochs": 2},
                 prune={"name": "search", "patience": 0, "tolerance": 0.3, "scope": "layer"})
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed"
    assert summary["thresholds"], "the search never ran"
    ckpt = load_checkpoint(tmp_path / "model.pt")
    for decision in summary["thresholds"]:
        assert decision["scope"] == "layer"
        layer = decision["layer_thresholds"]
        assert list(layer) == list(ckpt["masks"])
        assert all(t >= 0 for t in layer.values()) and len(set(layer.values())) > 1  # per tensor
        assert decision["val_loss_after"] <= 1.3 * decision["val_loss_before"] + 1e-12
    assert summary["remaining_pct"] < 100.0
    for name, mask in ckpt["masks"].items():
        weights = ckpt["state_dict"][name]
        assert torch.equal(weights[~mask], torch.zeros_like(weights[~mask])), name
    assert sum(int((~m).sum()) for m in ckpt["masks"].values()) > 0


def test_a_fixed_schedule_with_layer_thresholds_prunes_the_same_fraction_everywhere(tmp_path):
    # Weights hardly move from their initialization (uniform on [-a, a], σ = a/√3), so τ = 0.5
    # prunes P(|w| < 0.5 a/√3) = 0.5/√3 = 28.9 % of every weight matrix, whatever its a.
    cfg = config(sens={"name": "none"}, optim={"lr": 1e-9}, trainer={"epochs": 1},
                 prune={"name": "fixed", "threshold": 0.5, "scope": "layer"})
    summary = train(cfg, tmp_path)
    (decision,) = summary["thresholds"]
    assert decision["threshold"] == 0.5 and decision["scope"] == "layer"
    rows = {r["name"]: r for r in summary["sparsity"]["layers"]}
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        assert 100 - rows[name]["remaining_pct"] == pytest.approx(100 * 0.5 / 3 ** 0.5, abs=3.0), name
    assert decision["layer_thresholds"]["fc1.weight"] < decision["layer_thresholds"]["fc3.weight"]


def test_the_scope_key():
    from sensreg.records.config_keys import LATER_KEYS
    from sensreg.run.config import ConfigError

    assert TrainConfig().prune.scope == "global" and LATER_KEYS[("prune", "scope")] == "global"
    folder = resources.files("sensreg.configs") / "prune"
    for name in PRUNE_SCHEDULES:
        assert (folder / f"{name}.yaml").is_file()
        assert composed("~experiment", f"prune={name}")["prune"]["scope"] == "global", name
    assert config(prune={"scope": "layer"}).prune.scope == "layer"
    assert config(prune={"scope": "layer"}).hash() != config().hash()
    with pytest.raises(ConfigError, match=r"prune.scope='bogus' is not one of: global, layer\."):
        config(prune={"scope": "bogus"})


# --- every registered pruning schedule ---------------------------------------------------------------

# The prune.* settings each schedule of PRUNE_SCHEDULES is tried with, in the 3-epoch runs of
# schedule_config (270 training samples, 6 steps an epoch): search searches after every epoch
# (three decisions), fixed prunes below 5e-3 in epochs 1 and 3, gmp to half the weights every
# second step. A new schedule needs its entry.
SCHEDULE_SETTINGS = {
    "search": {"patience": 0, "tolerance": 0.1},
    "fixed": {"threshold": 5e-3, "every": 2},
    "gmp": {"target": 0.5, "every": 2},
    "gmp_units": {"target": 0.5, "every": 2},
    "none": {},
}
MUST_PRUNE = {"search", "fixed", "gmp", "gmp_units"}  # at least one decision in that run
NEVER_PRUNES = {"none"}
# What every threshold decision holds: the report's table of decisions and its plot read these.
DECISION_KEYS = {"epoch", "threshold", "pruned", "remaining_pct_before", "remaining_pct_after",
                 "val_loss_before", "val_loss_after"}


def schedule_config(name: str) -> TrainConfig:
    """A short deterministic spec run pruned by schedule ``name`` with its SCHEDULE_SETTINGS."""
    if name not in SCHEDULE_SETTINGS:
        pytest.fail(f"the pruning schedule {name!r} of PRUNE_SCHEDULES has no SCHEDULE_SETTINGS entry in "
                    f"tests/test_pruning.py: add the prune.* settings under which it prunes in a 3-epoch run")
    return config(sens={"name": "spec", "lam": 1e-3}, trainer={"epochs": 3, "deterministic": True},
                  prune={"name": name, **SCHEDULE_SETTINGS[name]})


def test_every_schedule_has_settings_here_and_the_settings_are_for_schedules():
    missing = set(PRUNE_SCHEDULES) - set(SCHEDULE_SETTINGS)
    stale = set(SCHEDULE_SETTINGS) - set(PRUNE_SCHEDULES)
    assert not missing, f"PRUNE_SCHEDULES has {sorted(missing)}, which SCHEDULE_SETTINGS (tests/test_pruning.py) lacks"
    assert not stale, f"SCHEDULE_SETTINGS (tests/test_pruning.py) has {sorted(stale)}, which PRUNE_SCHEDULES lacks"
    assert MUST_PRUNE | NEVER_PRUNES <= set(PRUNE_SCHEDULES)


@pytest.mark.parametrize("name", list(PRUNE_SCHEDULES))
def test_every_schedule_has_a_config_file_named_after_it(name):
    path = resources.files("sensreg.configs") / "prune" / f"{name}.yaml"
    assert path.is_file(), f"configs/prune/{name}.yaml is missing"
    cfg = TrainConfig.from_dict(composed(f"prune={name}"))
    assert cfg.prune.name == PRUNE_SCHEDULES[name].name == name
    assert type(build_prune_schedule(cfg.prune, cfg.trainer.epochs)) is PRUNE_SCHEDULES[name]


@pytest.mark.parametrize("name", list(PRUNE_SCHEDULES))
def test_every_schedule_prunes_a_short_run_as_it_decides(name, tmp_path, monkeypatch):
    built = []  # the run's own schedule object

    def recording(*args, real=run_module.build_prune_schedule):
        built.append(real(*args))
        return built[-1]

    monkeypatch.setattr(run_module, "build_prune_schedule", recording)
    summary = train(schedule_config(name), tmp_path)
    assert summary["status"] == "completed"
    (schedule,) = built
    assert type(schedule) is PRUNE_SCHEDULES[name]

    # summary.json records exactly the schedule's decisions, in its order, within the run
    decisions = json.loads((tmp_path / "summary.json").read_text())["thresholds"]
    assert decisions == json.loads(json.dumps(schedule.thresholds))
    if name in MUST_PRUNE:
        assert decisions, f"{name} made no decision with {SCHEDULE_SETTINGS[name]}"
    if name in NEVER_PRUNES:
        assert decisions == []
    epochs = [d["epoch"] for d in decisions]
    assert epochs == sorted(epochs) and all(1 <= e <= 3 for e in epochs)
    for d in decisions:
        assert DECISION_KEYS <= set(d), sorted(DECISION_KEYS - set(d))
        assert d["pruned"] > 0 and d["remaining_pct_after"] < d["remaining_pct_before"]

    # metrics.csv: each epoch's threshold is that of the last decision so far, and its remaining
    # fraction that of the epoch's last decision
    threshold = 0.0
    for row in metrics_without_time(tmp_path):
        made = [d for d in decisions if d["epoch"] == int(row["epoch"])]
        if made:
            threshold = made[-1]["threshold"]
            assert float(row["remaining_pct"]) == pytest.approx(made[-1]["remaining_pct_after"], rel=1e-12)
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-12)

    # model.pt: the pruned weights are exactly zero, and they are the ones the decisions pruned
    ckpt = load_checkpoint(tmp_path / "model.pt")
    for key, mask in ckpt["masks"].items():
        assert not ckpt["state_dict"][key][~mask].any(), key
    assert sum(int((~m).sum()) for m in ckpt["masks"].values()) == sum(d["pruned"] for d in decisions)


@pytest.mark.parametrize("name", list(PRUNE_SCHEDULES))
def test_every_schedule_resumes_a_stopped_run_exactly(name, tmp_path, monkeypatch):
    cfg = schedule_config(name)
    train(cfg, tmp_path / "full")
    stop_at_step(monkeypatch, 9)  # in the middle of epoch 2, after epoch 1's decisions
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "cut")
    state = load_training_state(tmp_path / "cut" / "last.pt")
    assert (state["loop"]["epoch"], state["loop"]["batch"]) == (1, 3)
    if name in MUST_PRUNE:  # the stop falls between decisions: the resumed run has some to carry on
        full = json.loads((tmp_path / "full" / "summary.json").read_text())["thresholds"]
        assert 0 < len(state["loop"]["thresholds"]) < len(full)
    monkeypatch.undo()
    train(cfg, tmp_path / "cut", resume_state(cfg, tmp_path / "cut" / "last.pt"))
    # the same model, masks, metrics (but the seconds), test error and decisions
    assert_same_run(tmp_path / "full", tmp_path / "cut")
    assert len(json.loads((tmp_path / "cut" / "summary.json").read_text())["resumed"]) == 1
