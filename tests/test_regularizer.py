"""The insensitivity-weighted shrink, the schedules, and one TrainStep against a hand-built update."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from sensreg.method.pruning import Masks, prunable_names
from sensreg.method.regularizer import (SCHEDULES, build_schedule, constant, cosine, insensitivity, insensitivity_stats,
                                 rescale_, shrink_, step)
from sensreg.method.sensitivity import VARIANTS, get_variant
from sensreg.method.step import StepSettings
from sensreg.run.loop import TrainStep

from conftest import parametrized

pytestmark = pytest.mark.usefixtures("single_thread")

D = torch.float64


def t(*values):
    return torch.tensor(values, dtype=D)


# --- insensitivity and shrink_ ------------------------------------------------------------------

def test_insensitivity_by_hand():
    sens = t(0.0, 0.25, 0.5, 0.999, 1.0, 1.5, 7.0)
    before = sens.clone()
    assert_close(insensitivity(sens), t(1.0, 0.75, 0.5, 0.001, 0.0, 0.0, 0.0), rtol=0, atol=1e-15)
    assert torch.equal(sens, before)  # not modified in place


def test_shrink_by_hand():
    # w <- w - lam * w * max(0, 1 - S), lam = 0.1
    w = nn.Parameter(t(2.0, -4.0, 0.5, 8.0, -1.0, 3.0))
    s = t(0.0, 0.5, 1.0, 1.5, 0.25, 0.9)
    #            S=0: 2 - 0.2      S=.5: -4 + .2   S=1   S>1   S=.25: -1 + .075   S=.9: 3 - .03
    expected = t(1.8, -3.8, 0.5, 8.0, -0.925, 2.97)
    m = nn.Parameter(torch.tensor([[10.0, -10.0], [1.0, 0.0]], dtype=D))
    sm = torch.tensor([[0.2, 2.0], [0.0, 0.0]], dtype=D)
    expected_m = torch.tensor([[9.2, -10.0], [0.9, 0.0]], dtype=D)
    shrink_([w, m], [s, sm], 0.1)
    assert_close(w.detach(), expected, rtol=0, atol=1e-14)
    assert_close(m.detach(), expected_m, rtol=0, atol=1e-14)
    assert w.grad is None and w.requires_grad


def test_rescale_by_hand():
    a, b, z = t(0.1, 0.4, 0.2), t(2.0, 0.5), t(0.0, 0.0)
    rescale_(x := [a.clone(), b.clone()], "none")
    assert torch.equal(x[0], a) and torch.equal(x[1], b)
    rescale_(x := [a.clone(), b.clone()], "gamma", gamma=30.0)
    assert_close(x[0], t(3.0, 12.0, 6.0)) and assert_close(x[1], t(60.0, 15.0))
    rescale_(x := [a.clone(), b.clone(), z.clone()], "max", over="tensor")
    assert_close(x[0], t(0.25, 1.0, 0.5)) and assert_close(x[1], t(1.0, 0.25))
    assert torch.equal(x[2], z)  # an all-zero tensor stays zero (no 0/0)
    rescale_(x := [a.clone(), b.clone()], "max", over="all")
    assert_close(x[0], t(0.05, 0.2, 0.1)) and assert_close(x[1], t(1.0, 0.25))
    with pytest.raises(ValueError, match="known: none, gamma, max"):
        rescale_([a.clone()], "log")


def test_insensitivity_stats_by_hand():
    # insensitivities 1, 0.7, 0.4, 0 | 0.9, 0.2 ; the third entry of the first tensor is pruned
    sens = [t(0.0, 0.3, 0.6, 1.5), t(0.1, 0.8)]
    kept = [t(1.0, 1.0, 0.0, 1.0), None]
    stats = insensitivity_stats(sens, kept)
    assert stats["insens_mean"] == pytest.approx((1 + 0.7 + 0 + 0.9 + 0.2) / 5)
    assert stats["insens_below_half"] == pytest.approx(2 / 5)
    assert insensitivity_stats(None, kept) == {"insens_mean": 1.0, "insens_below_half": 0.0}


def test_shrink_lam_zero_is_identity():
    w = nn.Parameter(t(2.0, -4.0, 0.5))
    shrink_([w], [t(0.0, 0.0, 0.0)], 0.0)
    assert torch.equal(w.detach(), t(2.0, -4.0, 0.5))
    shrink_([w], None, 0.0)
    assert torch.equal(w.detach(), t(2.0, -4.0, 0.5))


def test_shrink_without_sensitivity_is_plain_decay():
    w = nn.Parameter(t(2.0, -4.0, 0.5))
    b = nn.Parameter(t(10.0))
    shrink_([w, b], None, 0.25)  # w * (1 - 0.25)
    assert_close(w.detach(), t(1.5, -3.0, 0.375), rtol=0, atol=1e-15)
    assert_close(b.detach(), t(7.5), rtol=0, atol=1e-15)


def test_shrink_with_zero_sensitivity_equals_plain_decay():
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(3, 4, generator=g, dtype=D)
    w2 = w1.clone()
    shrink_([w1], [torch.zeros_like(w1)], 0.03)
    shrink_([w2], None, 0.03)
    assert_close(w1, w2, rtol=1e-15, atol=0)


def test_shrink_matches_formula_on_random_tensors():
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(5, 3, generator=g, dtype=D), torch.randn(7, generator=g, dtype=D)]
    ss = [2 * torch.rand(5, 3, generator=g, dtype=D), 2 * torch.rand(7, generator=g, dtype=D)]
    lam = 0.37
    expected = [w - lam * w * torch.clamp(1 - s, min=0) for w, s in zip(ws, ss)]
    shrink_(ws, ss, lam)
    for w, e in zip(ws, expected):
        assert_close(w, e, rtol=1e-14, atol=1e-15)


def test_shrink_rejects_lam_outside_zero_one():
    w = t(1.0, 2.0)
    for lam in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="lam"):
            shrink_([w], [t(0.0, 0.0)], lam)
        with pytest.raises(ValueError, match="lam"):
            shrink_([w], None, lam)
    assert torch.equal(w, t(1.0, 2.0))


def test_shrink_empty_list_is_fine():
    shrink_([], None, 0.1)
    shrink_([], [], 0.1)


# --- schedules ------------------------------------------------------------------------------------

def test_constant_schedule():
    f = constant()
    assert [f(e, 10) for e in (0, 1, 5, 9, 10)] == [1.0] * 5


def test_step_schedule_by_hand():
    # milestones in epochs counted from 1: the factor drops once epoch `m` is over, as in
    # torch's MultiStepLR with 0-based epoch indices (index >= m).
    f = step(milestones=(2, 4), gamma=0.5)
    assert [f(e, 6) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert [step(milestones=[4, 2], gamma=0.5)(e, 6) for e in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    d = step()  # (30, 60), 0.1
    assert d(0, 90) == 1.0 and d(29, 90) == 1.0
    assert d(30, 90) == pytest.approx(0.1, rel=1e-15) and d(59, 90) == pytest.approx(0.1, rel=1e-15)
    assert d(60, 90) == pytest.approx(0.01, rel=1e-14) and d(89, 90) == pytest.approx(0.01, rel=1e-14)


def test_step_schedule_agrees_with_torch_multisteplr():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 5], gamma=0.1)
    f = step(milestones=[3, 5], gamma=0.1)
    for epoch in range(8):
        assert f(epoch, 8) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_cosine_schedule_by_hand():
    f = cosine()
    c = math.cos(math.pi / 4)  # 0.70710678...
    expected = [1.0, 0.5 * (1 + c), 0.5, 0.5 * (1 - c)]  # 1, 0.853553, 0.5, 0.146447
    assert [f(e, 4) for e in range(4)] == pytest.approx(expected, rel=1e-14)
    assert [f(e, 4) for e in range(4)] == pytest.approx([1.0, 0.8535533905932737, 0.5, 0.14644660940672627],
                                                        rel=1e-12)
    assert f(4, 4) == pytest.approx(0.0, abs=1e-15)  # "after the last" epoch
    g = cosine(min_factor=0.1)
    assert g(0, 4) == pytest.approx(1.0, rel=1e-15)
    assert g(2, 4) == pytest.approx(0.55, rel=1e-14)  # 0.1 + 0.9 * 0.5
    assert g(1, 4) == pytest.approx(0.1 + 0.9 * 0.8535533905932737, rel=1e-14)
    assert g(4, 4) == pytest.approx(0.1, rel=1e-14)
    assert cosine()(0, 0) == 1.0  # no division by zero


def test_build_schedule():
    assert set(SCHEDULES) == {"constant", "step", "cosine"}
    assert build_schedule("constant")(3, 10) == 1.0
    # keys meant for other schedules are ignored (a config carries all of them)
    s = build_schedule("step", milestones=[1], gamma=0.5, min_factor=0.3)
    assert [s(e, 3) for e in range(3)] == [1.0, 0.5, 0.5]
    c = build_schedule(name="cosine", min_factor=0.2, milestones=[1], gamma=0.5)
    assert c(2, 4) == pytest.approx(0.6, rel=1e-14)
    assert build_schedule("constant", milestones=[1], gamma=0.5)(5, 10) == 1.0


def test_build_schedule_unknown_name_lists_known_ones():
    with pytest.raises(KeyError) as err:
        build_schedule("exponential")
    message = str(err.value)
    assert "exponential" in message
    for name in ("constant", "step", "cosine"):
        assert name in message


# --- one TrainStep against the hand-built update ----------------------------------------------------

LR, LAM = 0.1, 0.3


def expected_update(ref, model, x, y, sens_name, regularized):
    """w - lr * dL/dw - lam * w * max(0, 1 - S), S from the independent references, pre-step."""
    names = [n for n, _ in model.named_parameters()]
    w = [p.detach().clone() for p in model.parameters()]
    grad = ref.loss_gradient(model, x, y)
    if sens_name == "spec":
        sbar = [torch.clamp(1 - s, min=0) for s in ref.spec(model, x, y, "logits")]
    elif sens_name == "unspec":
        sbar = [torch.clamp(1 - s, min=0) for s in ref.unspec(model, x, "logits")]
    elif sens_name == "loss":
        sbar = [torch.clamp(1 - g.abs(), min=0) for g in grad]
    elif sens_name == "neuron":
        sbar = [torch.clamp(1 - s, min=0) for s in ref.neuron(model, x, "logits")]
    elif sens_name == "l2":
        sbar = [torch.ones_like(p) for p in w]
    else:  # none
        sbar = [torch.zeros_like(p) for p in w]
    return [wi - LR * gi - (LAM * wi * si if n in regularized else 0.0)
            for n, wi, gi, si in zip(names, w, grad, sbar)], sbar


@pytest.mark.parametrize("sens_name", ["spec", "unspec", "loss", "neuron", "l2", "none"])
@pytest.mark.parametrize("which", ["all", "weights"])
def test_train_step_equals_hand_built_update(sens_name, which, batch, ref):
    x, y = batch
    x = 2.0 * x  # with a steeper last layer: sensitivities on both sides of 1
    model = ref.mlp()
    with torch.no_grad():  # (a unit's S averages over the classes: steeper still for neuron)
        model[2].weight.mul_(10.0 if sens_name == "neuron" else 4.0)
    regularized = prunable_names(model, which)
    expected, sbar = expected_update(ref, model, x, y, sens_name, regularized)
    if sens_name in ("spec", "unspec", "neuron"):  # the clamp is exercised: some S > 1, most S < 1
        all_sbar = torch.cat([s.flatten() for s in sbar])
        assert bool((all_sbar == 0).any()) and bool((all_sbar > 0.5).any())

    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    masks = Masks(model, prunable_names(model, "all"))
    train_step = TrainStep(model, opt, masks, StepSettings(get_variant(sens_name), regularized, "logits"))
    train_step(x, y, LAM)

    for p, e in zip(model.parameters(), expected):
        assert_close(p.detach(), e, rtol=1e-12, atol=1e-13)
    assert masks.kept() == masks.total()


def test_every_variant_has_its_hand_built_update():
    # expected_update has a branch per variant (the last one is that of "none"), so the test above
    # names them by hand.
    missing = [name for name in VARIANTS if name not in parametrized(test_train_step_equals_hand_built_update,
                                                                     "sens_name")]
    assert not missing, (f"the sensitivity variant(s) {missing} of VARIANTS are not in the list of "
                         f"test_train_step_equals_hand_built_update (tests/test_regularizer.py): add each there, "
                         f"with its own branch in expected_update")


def test_train_step_returns_pre_step_loss_and_lam_zero_is_plain_sgd(batch, ref):
    x, y = batch
    model = ref.mlp()
    with torch.no_grad():
        loss_before = torch.nn.functional.cross_entropy(model(x), y)
    grad = ref.loss_gradient(model, x, y)
    expected = [p.detach() - LR * g for p, g in zip(model.parameters(), grad)]
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    train_step = TrainStep(model, opt, Masks(model, prunable_names(model, "all")),
                           StepSettings(get_variant("spec"), prunable_names(model, "all")))
    loss = train_step(x, y, 0.0)
    assert_close(loss, loss_before, rtol=1e-14, atol=0)
    assert not loss.requires_grad
    for p, e in zip(model.parameters(), expected):
        assert_close(p.detach(), e, rtol=1e-12, atol=1e-13)
