"""The ``sample`` reduction, S = mean_n |d o_n / dw|, against an explicit loop over samples and outputs.

The reference forwards each sample alone and takes one scalar ``torch.autograd.grad`` per sample
and output component, in float64; it shares no code with ``per_sample.py``. For batch norm,
"per sample" means the batch's statistics held constant: the reference forwards each sample in
evaluation mode with the running statistics set to the batch's mean and biased variance.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from sensreg.method.per_sample import LayerTape, PerSampleError, has_batch_statistics, held_batch_statistics
from sensreg.method.sensitivity import Pass, class_rows, get_variant, gradients_and_sensitivity

pytestmark = pytest.mark.usefixtures("single_thread")

TIGHT = dict(rtol=1e-10, atol=1e-13)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 4))


def convnet() -> nn.Module:
    # padding, stride, dilation, groups, max pooling, a conv without bias
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=2, dilation=2), nn.ReLU(), nn.MaxPool2d(2),  # 4x4x4
                         nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False), nn.Tanh(),  # 2x2x6
                         nn.Conv2d(6, 3, 2), nn.Flatten(), nn.Linear(3, 5))


def bnnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AvgPool2d(4),
                         nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))


def seqnet() -> nn.Module:
    # a linear layer on (N, positions, features): the per-sample sum over positions is inside |.|
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, 3))


NETS = {"mlp": (mlp, (6,)), "conv": (convnet, (2, 8, 8)), "bn": (bnnet, (2, 8, 8)), "seq": (seqnet, (3, 4))}


def make(name: str, n: int = 7, seed: int = 0):
    build, shape = NETS[name]
    torch.manual_seed(seed)
    model = build().double().train()
    x = torch.randn(n, *shape, dtype=torch.float64)
    with torch.no_grad():
        classes = model(x).shape[1]
    y = torch.randint(0, classes, (n,))
    return model, x, y


def per_sample_model(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in which each sample's forward pass is that sample's own path: batch
    norms in evaluation mode with the running statistics set to the batch's."""
    ref = copy.deepcopy(model)
    norms = [m for m in ref.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o: seen.__setitem__(m, i[0].detach())) for m in norms]
    with torch.no_grad():
        ref(x)
    for h in hooks:
        h.remove()
    for m in norms:
        dims = [0] + list(range(2, seen[m].dim()))
        m.running_mean.copy_(seen[m].mean(dims))
        m.running_var.copy_(seen[m].var(dims, unbiased=False))
    return ref.eval()


def reference(model, x, y, variant: str, output: str = "logits", rows=None) -> list[torch.Tensor]:
    """mean_n |d o_n / dw| by a loop over samples (each forwarded alone) and outputs."""
    ref = per_sample_model(model, x)
    params = list(ref.parameters())
    total = [torch.zeros_like(p) for p in params]
    for n in range(x.shape[0]):
        z = ref(x[n:n + 1])
        o = z.softmax(1) if output == "probs" else z
        if variant == "spec":
            scalars = [o[0, int(y[n])]]
        elif variant == "loss":
            scalars = [F.cross_entropy(z, y[n:n + 1])]
        else:
            scalars = [o[0, k] for k in rows]
        for s in scalars:
            grads = torch.autograd.grad(s, params, retain_graph=True, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t += g.abs() / len(scalars)
    return [t / x.shape[0] for t in total]


def sample_sensitivity(model, x, y, variant, output="logits", classes=None, generator=None):
    params = list(model.parameters())
    tape = LayerTape(model, params)
    context = held_batch_statistics(model) if has_batch_statistics(model) else torch.enable_grad()
    with tape.record(), context:
        logits = model(x)
    return get_variant(variant).per_sample(Pass(logits, y, params, [], output, classes, generator, tape=tape))


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("output", ["logits", "probs"])
def test_specific_equals_the_loop_over_samples(net, output):
    model, x, y = make(net)
    got = sample_sensitivity(model, x, y, "spec", output)
    for g, e in zip(got, reference(model, x, y, "spec", output)):
        assert_close(g, e, **TIGHT)


@pytest.mark.parametrize("net", list(NETS))
def test_unspecific_exact_and_sampled_equal_the_loop(net):
    model, x, y = make(net)
    classes = model(x).shape[1]
    got = sample_sensitivity(model, x, y, "unspec")
    for g, e in zip(got, reference(model, x, y, "unspec", rows=range(classes))):
        assert_close(g, e, **TIGHT)
    # K sampled classes: the rows the generator draws, the same draw for the reference
    got = sample_sensitivity(model, x, y, "unspec", "probs", classes=2, generator=torch.Generator().manual_seed(3))
    rows = class_rows(classes, 2, torch.Generator().manual_seed(3), x.device).tolist()
    for g, e in zip(got, reference(model, x, y, "unspec", "probs", rows=rows)):
        assert_close(g, e, **TIGHT)


@pytest.mark.parametrize("net", ["mlp", "conv", "bn"])
def test_loss_based_equals_the_loop(net):
    model, x, y = make(net)
    got = sample_sensitivity(model, x, y, "loss")
    for g, e in zip(got, reference(model, x, y, "loss")):
        assert_close(g, e, **TIGHT)


def test_sample_reduction_is_not_the_batch_mean_derivative():
    """mean_n |d o_n/dw| >= |d mean_n o_n / dw|, strictly where samples' derivatives cancel."""
    model, x, y = make("mlp", n=20)
    params = list(model.parameters())
    sample = sample_sensitivity(model, x, y, "spec")
    logits = model(x)
    _, batch = gradients_and_sensitivity(get_variant("spec"), logits, F.cross_entropy(logits, y), y, params)
    for s, b in zip(sample, batch):
        assert bool((s >= b - 1e-12).all())
    assert sum(float((s - b).sum()) for s, b in zip(sample, batch)) > 0.1 * sum(float(s.sum()) for s in sample)


def test_chunks_of_samples_give_the_same_sums(monkeypatch):
    """Conv per-sample gradients are formed a chunk of samples at a time; one sample a chunk
    (the smallest budget) gives the same result as the whole batch at once."""
    import sensreg.method.per_sample as ps

    model, x, y = make("conv", n=9)
    whole = sample_sensitivity(model, x, y, "unspec")
    monkeypatch.setattr(ps, "CHUNK_ELEMENTS", 1)
    for a, b in zip(sample_sensitivity(model, x, y, "unspec"), whole):
        assert_close(a, b, **TIGHT)


def test_gradients_and_sensitivity_with_a_tape_keeps_the_loss_gradient():
    """The loss gradient of the step is that of the ordinary (training-mode) forward, batch norm
    included; only the sensitivity's own pass holds the batch statistics."""
    model, x, y = make("bn")
    params = list(model.parameters())
    plain = copy.deepcopy(model)
    logits = plain(x)
    expected = torch.autograd.grad(F.cross_entropy(logits, y), list(plain.parameters()))
    tape = LayerTape(model, params)
    logits = model(x)
    with tape.record(), held_batch_statistics(model):
        sens_logits = model(x)
    grads, sens = gradients_and_sensitivity(get_variant("spec"), logits, F.cross_entropy(logits, y), y, params,
                                            tape=tape, sens_logits=sens_logits)
    for g, e in zip(grads, expected):
        assert_close(g, e, **TIGHT)
    for s, e in zip(sens, reference(model, x, y, "spec")):
        assert_close(s, e, **TIGHT)
    # the held pass left the running statistics as the one training forward made them
    for a, b in zip(model.buffers(), plain.buffers()):
        assert torch.equal(a, b)


def test_unsupported_layers_are_named():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(PerSampleError, match=r"1\.weight.*LayerNorm.*sens\.reduction=batch"):
        LayerTape(model, list(model.parameters()))
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    tape = LayerTape(model, list(model.parameters()))
    with pytest.raises(PerSampleError, match="more than once"):
        with tape.record():
            model(torch.randn(2, 3))


@pytest.mark.parametrize("net", ["conv", "bn"])
@pytest.mark.parametrize("scale, over", [("none", "tensor"), ("gamma", "tensor"), ("max", "tensor"), ("max", "all")])
def test_train_step_shrinks_by_the_scaled_per_sample_insensitivity(net, scale, over):
    """One TrainStep with sens.reduction=sample against w - lr dL/dw - lam w max(0, 1 - scaled S),
    S from the loop over samples; its insensitivity figures from the same S."""
    from sensreg.method.pruning import Masks, prunable_names
    from sensreg.method.step import StepSettings
    from sensreg.run.loop import TrainStep

    lr, lam, gamma = 0.1, 0.3, 4.0
    model, x, y = make(net)
    names = prunable_names(model, "all", batchnorm=True)
    params = list(model.parameters())
    sens = reference(model, x, y, "spec")
    if scale == "gamma":
        sens = [s * gamma for s in sens]
    elif scale == "max":
        top = torch.stack([s.max() for s in sens]).max()
        sens = [s / (top if over == "all" else s.max()) for s in sens]
    sbar = [torch.clamp(1 - s, min=0) for s in sens]
    plain = copy.deepcopy(model)
    grads = torch.autograd.grad(F.cross_entropy(plain(x), y), list(plain.parameters()))
    expected = [p.detach() - lr * g - lam * p.detach() * b for p, g, b in zip(params, grads, sbar)]
    everything = torch.cat([b.flatten() for b in sbar])
    expected_stats = {"insens_mean": float(everything.mean()), "insens_below_half": float((everything < 0.5).double().mean())}

    step = TrainStep(model, torch.optim.SGD(params, lr=lr), Masks(model, names),
                     StepSettings(get_variant("spec"), names, reduction="sample", scale=scale, gamma=gamma,
                                  scale_over=over))
    step(x, y, lam, measure=True)
    for p, e in zip(model.parameters(), expected):
        assert_close(p.detach(), e, **TIGHT)
    assert step.insensitivity == pytest.approx(expected_stats, rel=1e-12)
