"""Sensitivity variants against independent computations on tiny float64 networks.

References: a per-sample, per-output loop of scalar autograd calls (conftest ``ref``), and
central finite differences of the batch-mean output with respect to single parameter entries.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from sensreg.method.sensitivity import (
    OUTPUTS,
    VARIANTS,
    Pass,
    batched_vjps_are_faster,
    get_variant,
    gradients_and_sensitivity,
    loss_based,
    output_of,
    tape_for,
    unspecific,
)

from conftest import parametrized


def specific(logits, targets, params, output="logits"):
    """spec's S as the training step computes it: the registry entry's batch reduction."""
    return VARIANTS["spec"].of_batch(Pass(logits, targets, params, [], output))


pytestmark = pytest.mark.usefixtures("single_thread")

TIGHT = dict(rtol=1e-10, atol=1e-12)  # two exact computations of the same float64 quantity
FD = dict(rtol=1e-6, atol=1e-8)  # central differences, eps = 1e-6, float64


def assert_all_close(actual, expected, **tol):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert_close(a, e, **tol)


@torch.no_grad()
def finite_difference(fn, params, eps=1e-6):
    """Central differences of the vector fn() w.r.t. every entry of every parameter:
    one tensor per parameter, shaped (*fn().shape, *p.shape)."""
    out_shape = fn().shape
    result = []
    for p in params:
        flat = p.data.view(-1)
        jac = torch.zeros(*out_shape, p.numel(), dtype=torch.float64)
        for i in range(p.numel()):
            orig = flat[i].item()
            flat[i] = orig + eps
            plus = fn()
            flat[i] = orig - eps
            minus = fn()
            flat[i] = orig
            jac[..., i] = (plus - minus) / (2 * eps)
        result.append(jac.reshape(*out_shape, *p.shape))
    return result


def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).double()


MODELS = ["tanh", "relu", "conv"]


def model_and_batch(kind, batch, ref):
    if kind == "conv":
        g = torch.Generator().manual_seed(2)
        x = torch.randn(5, 1, 5, 5, generator=g, dtype=torch.float64)
        return conv_net(), x, torch.tensor([0, 2, 1, 1, 2])
    x, y = batch
    return ref.mlp(act=kind), x, y


# --- against the per-sample loop ------------------------------------------------------------------

@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("kind", MODELS)
def test_specific_matches_per_sample_loop(kind, output, batch, ref):
    model, x, y = model_and_batch(kind, batch, ref)
    params = list(model.parameters())
    got = specific(model(x), y, params, output)
    assert_all_close(got, ref.spec(model, x, y, output), **TIGHT)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("kind", MODELS)
def test_unspecific_exact_matches_per_sample_loop(kind, output, batched, batch, ref):
    model, x, _ = model_and_batch(kind, batch, ref)
    params = list(model.parameters())
    got = unspecific(model(x), params, output, batched=batched)
    assert_all_close(got, ref.unspec(model, x, output), **TIGHT)


def test_reduction_is_abs_of_batch_mean_not_mean_of_abs(batch, ref):
    """Guards the references themselves: the two reductions really differ on this batch, so the
    tests above would notice the wrong one."""
    model = ref.mlp()
    x, y = batch
    params = list(model.parameters())
    got = specific(model(x), y, params, "logits")
    per_sample_abs = [torch.zeros_like(p) for p in params]
    for n in range(x.shape[0]):
        for acc, s in zip(per_sample_abs, ref.spec(model, x[n:n + 1], y[n:n + 1], "logits")):
            acc += s / x.shape[0]
    assert not torch.allclose(got[0], per_sample_abs[0], rtol=1e-3, atol=1e-6)
    # the batch-mean reduction can only be smaller (triangle inequality)
    for g, s in zip(got, per_sample_abs):
        assert bool((g <= s + 1e-12).all())


# --- against finite differences -------------------------------------------------------------------

@pytest.mark.parametrize("output", OUTPUTS)
def test_specific_and_unspecific_match_finite_differences(output, batch, ref):
    model = ref.mlp(act="tanh")
    x, y = batch
    params = list(model.parameters())

    def mean_output():  # (C,)
        return output_of(model(x), output).mean(dim=0)

    def mean_target_output():  # (1,)
        return output_of(model(x), output).gather(1, y[:, None]).mean().reshape(1)

    jac = finite_difference(mean_output, params)  # (C, *p.shape) per parameter
    tgt = finite_difference(mean_target_output, params)  # (1, *p.shape)

    spec = specific(model(x), y, params, output)
    unspec = unspecific(model(x), params, output)
    assert_all_close(spec, [t[0].abs() for t in tgt], **FD)
    assert_all_close(unspec, [j.abs().mean(dim=0) for j in jac], **FD)
    # and the loop reference agrees with the finite differences, signs included
    assert_all_close(ref.mean_output_jacobian(model, x, output), jac, **FD)
    assert_all_close(ref.target_derivative(model, x, y, output), [t[0] for t in tgt], **FD)


def test_sensitivity_values_are_not_degenerate(batch, ref):
    """The tiny network has sensitivities well away from 0 and on both sides of 1 (the
    insensitivity clamp), so the comparisons above test something."""
    model = ref.mlp()
    x, y = batch
    flat = torch.cat([s.flatten() for s in specific(model(x), y, list(model.parameters()), "logits")])
    assert float(flat.max()) > 0.3 and float((flat > 1e-3).float().mean()) > 0.8


# --- sampled-class estimate -----------------------------------------------------------------------

def subset_mean(per_class, subset):
    idx = torch.tensor(subset)
    return [a[idx].mean(dim=0) for a in per_class]


def flat(ts):
    return torch.cat([t.flatten() for t in ts])


# The probs backward is ~20x slower under is_grads_batched, so it gets few draws: enough to
# check every draw is a subset mean; uniformity is a property of the sampler, checked on logits.
@pytest.mark.parametrize("k, output, draws", [(1, "logits", 240), (2, "logits", 240), (3, "logits", 240),
                                              (2, "probs", 24)])
def test_sampled_unspecific_is_a_uniform_subset_mean_hence_unbiased(k, output, draws, batch, ref):
    model = ref.mlp()  # C = 4
    x, _ = batch
    params = list(model.parameters())
    per_class = [j.abs() for j in ref.mean_output_jacobian(model, x, output)]
    num_classes = per_class[0].shape[0]
    subsets = list(itertools.combinations(range(num_classes), k))
    means = {s: flat(subset_mean(per_class, s)) for s in subsets}
    exact = flat(ref.unspec(model, x, output))

    # Averaging the estimator's possible values over all K-subsets gives the exact value ...
    assert_close(torch.stack(list(means.values())).mean(dim=0), exact, **TIGHT)
    # ... and the subset means are distinct, so each draw can be identified.
    for a, b in itertools.combinations(subsets, 2):
        assert not torch.allclose(means[a], means[b], rtol=1e-6, atol=1e-9)

    stacked = torch.stack([means[s] for s in subsets])
    gen = torch.Generator().manual_seed(1234)
    counts, total = Counter(), torch.zeros_like(exact)
    logits = model(x)
    for _ in range(draws):
        est = flat(unspecific(logits, params, output, classes=k, generator=gen, retain_graph=True))
        close = ((stacked - est).abs() <= 1e-12 + 1e-10 * stacked.abs()).all(dim=1)
        assert int(close.sum()) == 1, "a sampled estimate must be the mean over one K-subset of classes"
        counts[subsets[int(close.nonzero())]] += 1
        total += est
    if draws < 200:
        return
    # every subset is drawn, with roughly equal frequency (seeded: deterministic)
    assert set(counts) == set(subsets)
    expected = draws / len(subsets)
    assert all(abs(c - expected) < 0.45 * expected for c in counts.values()), counts
    # the empirical mean approaches the exact value
    assert_close(total / draws, exact, rtol=0.15, atol=1e-3)


@pytest.mark.parametrize("k", [4, 5, 100])
def test_sampled_unspecific_with_k_at_least_c_is_exact(k, batch, ref):
    model = ref.mlp()
    x, _ = batch
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    got = unspecific(model(x), params, "probs", classes=k, generator=gen)
    assert_all_close(got, ref.unspec(model, x, "probs"), **TIGHT)


def test_sampled_unspecific_is_reproducible_with_a_seeded_generator(batch, ref):
    model = ref.mlp()
    x, _ = batch
    params = list(model.parameters())
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(7)
        runs.append([flat(unspecific(model(x), params, "logits", classes=2, generator=gen)) for _ in range(5)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert any(not torch.equal(runs[0][0], r) for r in runs[0][1:])  # successive draws differ


@pytest.mark.parametrize("kind", MODELS)
def test_sampled_unspecific_looped_equals_batched_for_the_same_draws(kind, batch, ref):
    model, x, _ = model_and_batch(kind, batch, ref)
    params = list(model.parameters())
    logits = model(x)
    for seed in range(4):
        looped = unspecific(logits, params, "probs", classes=2, generator=torch.Generator().manual_seed(seed),
                            retain_graph=True, batched=False)
        batched = unspecific(logits, params, "probs", classes=2, generator=torch.Generator().manual_seed(seed),
                             retain_graph=True, batched=True)
        assert_all_close(looped, batched, **TIGHT)


def test_batched_vjps_are_used_only_where_autograd_has_batching_rules():
    from sensreg.models import build_model
    assert batched_vjps_are_faster(build_model("lenet300", 10, (1, 28, 28)))
    assert not batched_vjps_are_faster(build_model("lenet5", 10, (1, 28, 28)))


def test_sampled_unspecific_rejects_nonpositive_k(batch, ref):
    model = ref.mlp()
    x, _ = batch
    with pytest.raises(ValueError, match="classes"):
        unspecific(model(x), list(model.parameters()), "logits", classes=0)


# --- loss-based and gradients_and_sensitivity --------------------------------------------------------

def test_loss_based_is_abs_of_loss_gradient(batch, ref):
    model = ref.mlp()
    x, y = batch
    params = list(model.parameters())
    grads = ref.loss_gradient(model, x, y)
    assert_all_close(loss_based(grads), [g.abs() for g in grads], rtol=0, atol=0)

    def loss():
        return F.cross_entropy(model(x), y).reshape(1)

    fd = [j[0] for j in finite_difference(loss, params)]
    got_grads, sens = gradients_and_sensitivity(get_variant("loss"), model(x), F.cross_entropy(model(x), y),
                                                y, params)
    assert_all_close(got_grads, fd, **FD)
    assert_all_close(sens, [g.abs() for g in fd], **FD)
    assert_all_close(got_grads, grads, **TIGHT)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("name", ["spec", "unspec", "loss", "neuron", "l2", "none"])
def test_gradients_and_sensitivity(name, output, batch, ref):
    model = ref.mlp(act="relu")
    x, y = batch
    params = list(model.parameters())
    variant = get_variant(name)
    tape = tape_for(variant, model, params, variant.reductions[0])
    with tape.record() if tape is not None else contextlib.nullcontext():
        logits = model(x)
    loss = F.cross_entropy(logits, y)
    grads, sens = gradients_and_sensitivity(variant, logits, loss, y, params, output, tape=tape)
    loss_grad = ref.loss_gradient(model, x, y)
    assert_all_close(grads, loss_grad, **TIGHT)
    expected = {
        "spec": lambda: ref.spec(model, x, y, output),
        "unspec": lambda: ref.unspec(model, x, output),
        "loss": lambda: [g.abs() for g in loss_grad],
        "neuron": lambda: ref.neuron(model, x, output),
        "l2": lambda: None,
        "none": lambda: None,
    }[name]()
    if expected is None:
        assert sens is None
    else:
        assert_all_close(sens, expected, **TIGHT)
    assert all(p.grad is None for p in params)  # it returns gradients, it does not accumulate them


def test_every_variant_has_its_expected_sensitivity_in_test_gradients_and_sensitivity():
    # That test holds an expected sensitivity per variant, so it names them by hand.
    missing = [name for name in VARIANTS if name not in parametrized(test_gradients_and_sensitivity, "name")]
    assert not missing, (f"the sensitivity variant(s) {missing} of VARIANTS are not in the list of "
                         f"test_gradients_and_sensitivity (tests/test_sensitivity.py): add each there, with its "
                         f"expected sensitivity from the references of conftest.py")


def test_gradients_and_sensitivity_sampled_unspec_uses_the_generator(batch, ref):
    model = ref.mlp()
    x, y = batch
    params = list(model.parameters())
    per_class = [j.abs() for j in ref.mean_output_jacobian(model, x, "logits")]
    logits = model(x)
    _, sens = gradients_and_sensitivity(get_variant("unspec"), logits, F.cross_entropy(logits, y), y, params,
                                        "logits", classes=2, generator=torch.Generator().manual_seed(3))
    candidates = [flat(subset_mean(per_class, s)) for s in itertools.combinations(range(4), 2)]
    assert sum(torch.allclose(flat(sens), c, rtol=1e-10, atol=1e-12) for c in candidates) == 1


def test_variant_registry():
    assert set(VARIANTS) == {"spec", "unspec", "loss", "neuron", "l2", "none"}
    assert get_variant("none").regularizes is False
    assert get_variant("l2").regularizes and not get_variant("l2").uses_sensitivity
    for name in ("spec", "unspec", "loss", "neuron"):
        assert get_variant(name).regularizes and get_variant(name).uses_sensitivity


def test_unknown_variant_lists_known_ones():
    with pytest.raises(KeyError) as err:
        get_variant("lobster")
    message = str(err.value)
    assert "lobster" in message
    for name in VARIANTS:
        assert name in message


def test_unknown_output_lists_known_ones(batch, ref):
    model = ref.mlp()
    x, y = batch
    logits = model(x)
    for call in (lambda: output_of(logits, "softmax"),
                 lambda: specific(logits, y, list(model.parameters()), "softmax"),
                 lambda: unspecific(logits, list(model.parameters()), "softmax", retain_graph=True)):
        with pytest.raises(ValueError) as err:
            call()
        assert "softmax" in str(err.value) and "logits" in str(err.value) and "probs" in str(err.value)


def test_output_of():
    z = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert output_of(z, "logits") is z
    e = torch.exp(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert_close(output_of(z, "probs"), torch.stack([e / e.sum(), torch.full((3,), 1 / 3, dtype=torch.float64)]))


# --- parameters that do not reach the output -----------------------------------------------------------

class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(5, 4)
        self.unused = nn.Linear(5, 2)  # registered, never called
        self.scale = nn.Parameter(torch.tensor([0.5, -2.0]))  # never used either

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("output", OUTPUTS)
def test_unused_parameters_get_zero_sensitivity(output, batch):
    model = WithUnused().double()
    x, y = batch
    params = list(model.parameters())
    used = list(model.body.parameters())
    for sens, used_ref in (
        (specific(model(x), y, params, output), specific(model(x), y, used, output)),
        (unspecific(model(x), params, output), unspecific(model(x), used, output)),
        (unspecific(model(x), params, output, classes=2, generator=torch.Generator().manual_seed(0)),
         unspecific(model(x), used, output, classes=2, generator=torch.Generator().manual_seed(0))),
    ):
        named = dict(zip([n for n, _ in model.named_parameters()], sens))
        for n in ("unused.weight", "unused.bias", "scale"):
            p = dict(model.named_parameters())[n]
            assert named[n].shape == p.shape and named[n].dtype == p.dtype
            assert torch.equal(named[n], torch.zeros_like(p))
        assert_all_close([named["body.weight"], named["body.bias"]], used_ref, **TIGHT)
        assert float(named["body.weight"].abs().sum()) > 0
