"""The neuron-level sensitivity (``sens=neuron``, method/neuron.py) against independent computations:
central finite differences of each sample's output with respect to a unit's output at one
position, on a network with a convolution, a batch norm and linear layers; and what the shrink
does with it (a whole unit scaled by one factor)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sensreg.method.neuron import UnitError
from sensreg.method.per_sample import held_batch_statistics
from sensreg.method.sensitivity import class_rows, get_variant, gradients_and_sensitivity, output_of, tape_for
from sensreg.method.step import SensitivityStep
from sensreg.run.config import ConfigError
from sensreg.run.lifecycle import train

from conftest import config

EPS = 1e-6


def convnet(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 3, 3), *([nn.BatchNorm2d(3)] if batchnorm else []), nn.ReLU(), nn.Flatten(),
              nn.Linear(3 * 4 * 4, 5), nn.Tanh(), nn.Linear(5, 4)]
    return nn.Sequential(*layers).double()


def batch(n: int = 6):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


def unit_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm2d))]


def finite_difference_units(model: nn.Module, x, output: str = "logits", classes=None) -> dict[nn.Module, torch.Tensor]:
    """mean over ``classes`` (default all), samples and positions of |d o_{n,k} / d z_{n,j,p}|,
    each derivative a central difference of sample n's own forward pass with eps added to the
    layer's output at one unit and position."""
    out = {}
    for layer in unit_layers(model):
        recorded = {}
        handle = layer.register_forward_hook(lambda m, i, o: recorded.setdefault("z", o))
        with torch.no_grad():
            model(x[:1])
        handle.remove()
        shape = recorded["z"].shape  # (1, units, ...) or (1, units)
        units = torch.zeros(shape[1], dtype=torch.float64)
        for n in range(x.shape[0]):
            for index in torch.cartesian_prod(*[torch.arange(s) for s in shape[1:]]).reshape(-1, len(shape) - 1):
                delta = torch.zeros(shape, dtype=torch.float64)
                delta[(0, *index.tolist())] = EPS
                with torch.no_grad():
                    outs = []
                    for sign in (1, -1):
                        h = layer.register_forward_hook(lambda m, i, o, d=sign * delta: o + d)
                        outs.append(output_of(model(x[n:n + 1]), output)[0])
                        h.remove()
                d = ((outs[0] - outs[1]) / (2 * EPS)).abs()
                d = d if classes is None else d[classes]
                units[int(index[0])] += d.mean()
        positions = shape[2:].numel()
        out[layer] = units / (x.shape[0] * positions)
    return out


def neuron_sensitivity(model, x, y, output="logits", classes=None, generator=None, batched=True):
    params = list(model.parameters())
    tape = tape_for(get_variant("neuron"), model, params, "sample")
    with tape.record():
        logits = model(x)
    _, sens = gradients_and_sensitivity(get_variant("neuron"), logits, F.cross_entropy(logits, y), y, params,
                                        output, classes, generator, batched, tape=tape)
    return dict(zip(params, sens))


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("output", ["logits", "probs"])
def test_unit_sensitivity_equals_finite_differences(output, batched):
    model, (x, y) = convnet(), batch()
    sens = neuron_sensitivity(model, x, y, output, batched=batched)
    for layer, expected in finite_difference_units(model, x, output).items():
        for p in (layer.weight, layer.bias):  # the unit's value, along the parameter's first dimension
            got = sens[p]
            assert torch.equal(got, got.reshape(got.shape[0], -1)[:, :1].expand_as(got.reshape(got.shape[0], -1))
                               .reshape(got.shape))
            torch.testing.assert_close(got.reshape(got.shape[0], -1)[:, 0], expected, rtol=1e-6, atol=1e-9)


def test_the_output_layer_units_have_sensitivity_one_over_c():
    # d o_k / d z_j of the logits themselves is 1 for k = j, else 0: S = 1/C for each.
    model, (x, y) = convnet(), batch()
    assert torch.allclose(neuron_sensitivity(model, x, y)[model[-1].bias], torch.full((4,), 0.25, dtype=torch.float64))


def test_sampled_classes_average_over_the_drawn_ones():
    model, (x, y) = convnet(), batch()
    sens = neuron_sensitivity(model, x, y, classes=2, generator=torch.Generator().manual_seed(5))
    rows = class_rows(4, 2, torch.Generator().manual_seed(5), torch.device("cpu"))
    for layer, expected in finite_difference_units(model, x, classes=rows).items():
        torch.testing.assert_close(sens[layer.bias], expected, rtol=1e-6, atol=1e-9)


def test_batch_norm_in_training_is_taken_with_its_batch_statistics_held():
    # Held statistics: each sample through the network as in evaluation mode, with the batch's
    # mean and biased variance as the running ones.
    model, (x, y) = convnet(batchnorm=True), batch()
    bn = model[1]
    with torch.no_grad():
        z = model[0](x)
    dims = (0, 2, 3)
    model.train()
    params = list(model.parameters())
    tape = tape_for(get_variant("neuron"), model, params, "sample")
    with torch.no_grad():
        model(x)  # training forward: the running averages move, but the held pass ignores them
    with tape.record(), held_batch_statistics(model):
        logits = model(x)
    _, sens = gradients_and_sensitivity(get_variant("neuron"), logits, F.cross_entropy(logits, y), y, params, tape=tape)
    evaluated = convnet(batchnorm=True)
    evaluated.eval()
    evaluated[1].running_mean.copy_(z.mean(dims))
    evaluated[1].running_var.copy_(z.var(dims, unbiased=False))
    expected = finite_difference_units(evaluated, x)
    position = {id(p): i for i, p in enumerate(params)}
    for p, layer in ((bn.weight, evaluated[1]), (model[0].bias, evaluated[0]), (model[4].bias, evaluated[4])):
        torch.testing.assert_close(sens[position[id(p)]], expected[layer], rtol=1e-6, atol=1e-9)


def test_the_shrink_scales_each_unit_as_a_whole():
    model, (x, y) = convnet(), batch()
    lam = 0.1
    expected_units = finite_difference_units(model, x)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = SensitivityStep(model, torch.optim.SGD(model.parameters(), lr=0.0), "neuron")
    step(x, y, lam)
    for name, layer in zip(("0", "3", "5"), unit_layers(model)):
        factor = 1 - lam * (1 - expected_units[layer]).clamp(min=0)
        for kind in ("weight", "bias"):
            old, new = before[f"{name}.{kind}"], getattr(layer, kind).detach()
            shape = (-1, *[1] * (old.dim() - 1))
            torch.testing.assert_close(new, old * factor.reshape(shape), rtol=1e-6, atol=1e-12)


def test_the_api_refuses_a_reduction_neuron_does_not_have():
    model = convnet()
    with pytest.raises(ValueError, match="reduction='batch'.*neuron"):
        SensitivityStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "neuron", reduction="batch")


def test_a_parameter_of_no_unit_is_named():
    class WithScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.scale = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return self.fc(x) * self.scale

    model = WithScale()
    with pytest.raises(UnitError, match="scale.*sens=spec"):
        SensitivityStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "neuron")
    model.scale.requires_grad_(False)  # frozen, it is neither trained nor regularized
    SensitivityStep(model, torch.optim.SGD(model.parameters(), lr=0.1), "neuron")


def test_the_runner_trains_neuron_and_refuses_the_batch_reduction(tmp_path):
    summary = train(config(model={"name": "lenet5"}, sens={"name": "neuron", "lam": 1e-2, "reduction": "sample"},
                           trainer={"epochs": 1}, prune={"name": "fixed", "threshold": 1e-2}), tmp_path / "run")
    assert summary["status"] == "completed" and summary["sens"] == "neuron"
    with pytest.raises(ConfigError, match="sens.reduction=batch is not defined for sens=neuron"):
        config(sens={"name": "neuron", "reduction": "batch"})
