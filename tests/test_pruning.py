"""Masks, the threshold search and the sparsity statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sensreg.models import build_model
from sensreg.pruning import Masks, layer_macs_per_weight, prunable_names, search_threshold, sparsity_stats
from sensreg.sensitivity import get_variant
from sensreg.train import TrainStep

pytestmark = pytest.mark.usefixtures("single_thread")


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def data(n: int = 32, features: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


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
    step = TrainStep(model, opt, get_variant(sens_name), masks, names)
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
    step = TrainStep(model, opt, get_variant("unspec"), masks, names)
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
    step = TrainStep(model, opt, get_variant("spec"), masks, names)
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
    from sensreg.train import train
    from test_train import config

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
