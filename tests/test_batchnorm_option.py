"""prune.batchnorm: the affine parameters of normalization layers are neither regularized nor
pruned unless it is true; networks without normalization layers are unaffected."""

from __future__ import annotations

import functools
from dataclasses import fields
from importlib import resources

import pytest
import torch
from torch import nn

from sensreg.records.checkpoint import CheckpointError, load_checkpoint
from sensreg.run.config import ConfigError, PruneConfig, TrainConfig
from sensreg.models import build_model
from sensreg.method.pruning import Masks, norm_parameter_names, prunable_names, sparsity_stats
from sensreg.records.tables import layer_table, render_text
from sensreg.method.sensitivity import get_variant
from sensreg.method.prune_schedules import PRUNE_SCHEDULES
from sensreg.run.lifecycle import setup as setup_run, train  # not `setup`: pytest < 9 would call it as a module set-up
from sensreg.method.step import StepSettings
from sensreg.run.loop import TrainStep

from conftest import composed, config, random_batch  # config(): the small synthetic-data run of the training tests

pytestmark = pytest.mark.usefixtures("single_thread")


def conv_bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


BN = ["1.weight", "1.bias"]


batch = functools.partial(random_batch, 16, (1, 8, 8), 3)  # batch(): 16 inputs for conv_bn_net, 3 classes


# --- which parameters -------------------------------------------------------------------------------

def test_normalization_layers_are_found_by_type_not_by_name():
    model = nn.Sequential()
    model.add_module("fc", nn.BatchNorm1d(5))  # a batch norm under a linear layer's name
    model.add_module("bn", nn.Linear(5, 5))  # and the reverse
    model.add_module("gn", nn.GroupNorm(1, 5))
    model.add_module("ln", nn.LayerNorm(5))
    model.add_module("inorm", nn.InstanceNorm1d(5, affine=True))
    model.add_module("sync", nn.SyncBatchNorm(5))
    model.add_module("out", nn.Linear(5, 2, bias=False))
    norms = {f"{m}.{p}" for m in ("fc", "gn", "ln", "inorm", "sync") for p in ("weight", "bias")}
    assert norm_parameter_names(model) == norms
    assert prunable_names(model, "all") == ["bn.weight", "bn.bias", "out.weight"]
    assert set(prunable_names(model, "all", batchnorm=True)) == norms | {"bn.weight", "bn.bias", "out.weight"}
    assert prunable_names(model, "weights", batchnorm=True) == ["bn.weight", "out.weight"]


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 32, 32)), ("vgg16_cifar", (3, 32, 32)),
                                        ("resnet18", (3, 64, 64))])
def test_every_batch_norm_of_the_shipped_networks_is_left_out(name, shape):
    with torch.device("meta"):
        model = build_model(name, 10, shape)
    bn = {f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)
          for p in ("weight", "bias")}
    assert bn and norm_parameter_names(model) == bn
    assert set(prunable_names(model, "all")) == {n for n, _ in model.named_parameters()} - bn
    assert set(prunable_names(model, "all", batchnorm=True)) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("which", ["all", "weights"])
def test_networks_without_batch_norm_are_unaffected(name, which):
    model = build_model(name, 10, (1, 28, 28))
    before = [n for n, p in model.named_parameters() if which == "all" or p.dim() > 1]  # the rule before the option
    assert prunable_names(model, which) == prunable_names(model, which, batchnorm=True) == before


# --- the shrink and the pruning ---------------------------------------------------------------------

def step_for(model: nn.Module, sens: str, batchnorm: bool) -> TrainStep:
    # A learning rate of zero: every change of a weight is the shrink's.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return TrainStep(model, optimizer, Masks(model, prunable_names(model, "all", batchnorm)),
                     StepSettings(get_variant(sens), prunable_names(model, "all", batchnorm)))


def one_shrink(sens: str, batchnorm: bool) -> tuple[dict, dict]:
    """The parameters of a fresh network before and after one step with lambda 0.5."""
    model = conv_bn_net()
    with torch.no_grad():  # gains and offsets away from 1 and 0, so that a shrink shows
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(0.5, 1.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step_for(model, sens, batchnorm)(*batch(), lam=0.5)
    return before, dict(model.named_parameters())


@pytest.mark.parametrize("sens", ["l2", "spec"])
def test_the_shrink_leaves_batch_norm_alone_by_default(sens):
    before, after = one_shrink(sens, batchnorm=False)
    for n in BN:
        assert torch.equal(after[n], before[n]), n  # exactly: not shrunk at all
    if sens == "l2":
        for n in set(after) - set(BN):
            assert torch.equal(after[n], before[n] * 0.5), n
    else:
        assert all(bool((after[n].abs() <= before[n].abs()).all()) for n in set(after) - set(BN))
        assert any(not torch.equal(after[n], before[n]) for n in set(after) - set(BN))


@pytest.mark.parametrize("sens", ["l2", "spec"])
def test_with_the_option_batch_norm_is_shrunk(sens):
    before, after = one_shrink(sens, batchnorm=True)
    for n in BN:
        assert bool((after[n].abs() < before[n].abs()).any()), n
        if sens == "l2":
            assert torch.equal(after[n], before[n] * 0.5), n


@pytest.mark.parametrize("batchnorm", [False, True])
def test_a_threshold_above_everything_prunes_batch_norm_only_with_the_option(batchnorm):
    model = conv_bn_net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = Masks(model, prunable_names(model, "all", batchnorm))
    threshold = 1.0 + max(float(p.detach().abs().max()) for p in model.parameters())
    masks.prune_below_(threshold)
    params = dict(model.named_parameters())
    for n in set(params) - set(BN):
        assert not params[n].any(), n  # everything around the batch norm is pruned
    for n in BN:
        if batchnorm:
            assert n in masks.names and not masks.state_dict()[n].any() and not params[n].any()
        else:
            assert n not in masks.names and torch.equal(params[n], before[n])
    assert masks.remaining_pct() == 0.0


def test_sparsity_stats_count_batch_norm_in_all_only():
    model = build_model("resnet20", 10, (3, 32, 32))
    masks = Masks(model, prunable_names(model, "all"))
    masks.prune_below_(1e9)  # every prunable entry
    stats = sparsity_stats(model, (3, 32, 32), masks.names)
    bn = norm_parameter_names(model)
    bn_count = sum(p.numel() for n, p in model.named_parameters() if n in bn)
    total = sum(p.numel() for p in model.parameters())
    assert bn_count == 1376  # 19 batch norms of 16, 32 or 64 channels
    assert stats["prunable"] == {"params": total - bn_count, "nonzero": 0, "remaining_pct": 0.0,
                                 "compression": float(total - bn_count)}
    # The gains (1) survive; the offsets start at 0, so only the gains count as non-zero.
    assert stats["all"]["params"] == total and stats["all"]["nonzero"] == bn_count // 2
    rows = {r["name"]: r for r in stats["layers"]}
    assert all(not rows[n]["prunable"] for n in bn)
    assert all(rows[n]["prunable"] for n in set(rows) - bn)
    text = render_text(layer_table(stats), width=200)
    assert "bn1.weight (not pruned)" in text and "fc.weight (not pruned)" not in text


def test_saved_masks_of_another_parameter_set_are_refused():
    # A run saved while batch norm was pruned (with its masks) cannot be continued without them.
    model = conv_bn_net()
    saved = Masks(model, prunable_names(model, "all", batchnorm=True)).state_dict()
    with pytest.raises(CheckpointError) as err:
        Masks(model, prunable_names(model, "all")).load_state_dict(saved)
    assert "1.weight" in str(err.value) and "prune.batchnorm" in str(err.value)


# --- the config key -------------------------------------------------------------------------------

def test_every_prune_config_has_the_dataclass_keys():
    folder = resources.files("sensreg.configs") / "prune"
    keys = {f.name for f in fields(PruneConfig)}
    options = [p for p in folder.iterdir() if p.name.endswith(".yaml")]
    assert sorted(p.name for p in options) == sorted(f"{name}.yaml" for name in PRUNE_SCHEDULES)
    for path in options:
        values = composed("~experiment", f"prune={path.name.removesuffix('.yaml')}")["prune"]
        assert set(values) == keys, path.name
        assert values["batchnorm"] is False, path.name


def test_the_key_is_validated_and_defaults_to_false():
    assert TrainConfig().prune.batchnorm is False
    assert config(prune={"batchnorm": True}).prune.batchnorm is True
    assert config(prune={"batchnorm": True}).hash() != config().hash()
    with pytest.raises(ConfigError, match="prune.batchnorm='yes' must be true or false"):
        config(prune={"batchnorm": "yes"})


# --- a whole run ----------------------------------------------------------------------------------

@pytest.mark.parametrize("batchnorm", [False, True])
def test_a_run_keeps_batch_norm_by_default_and_prunes_it_with_the_option(tmp_path, batchnorm):
    # ResNet-20 on the 1x28x28 synthetic data; a learning rate of practically zero, a strong
    # l2 shrink (0.5 per step, 6 steps) and a fixed threshold that every shrunk parameter falls
    # below: whatever the regularizer and the pruning may touch ends at zero.
    cfg = config(model={"name": "resnet20"}, sens={"name": "l2", "lam": 0.5}, optim={"lr": 1e-12},
                 prune={"name": "fixed", "threshold": 0.05, "batchnorm": batchnorm},
                 trainer={"epochs": 1})
    initial = {n: p.detach().clone() for n, p in setup_run(cfg)[2].named_parameters()}  # the run's own seed
    summary = train(cfg, tmp_path)
    final = load_checkpoint(tmp_path / "model.pt")
    bn = {n for n in initial if ".bn" in n or n.startswith("bn")}
    assert len(bn) == 38 and bn == norm_parameter_names(build_model("resnet20", 10, (1, 28, 28)))
    rows = {r["name"]: r for r in summary["sparsity"]["layers"]}
    assert summary["remaining_pct"] == 0.0
    for n in initial:
        if n in bn and not batchnorm:
            assert n not in final["masks"] and not rows[n]["prunable"]
            # Trained with a learning rate of 1e-12 only: the gains stay exactly 1, the offsets
            # within a hair of 0; no shrink, no pruning.
            if n.endswith("weight"):
                assert torch.equal(final["state_dict"][n], initial[n]) and bool((initial[n] == 1).all())
            else:
                assert torch.allclose(final["state_dict"][n], initial[n], rtol=0, atol=1e-9)
        else:
            assert n in final["masks"] and rows[n]["prunable"]
            assert not final["masks"][n].any() and not final["state_dict"][n].any(), n
    bn_count = sum(initial[n].numel() for n in bn)
    if batchnorm:
        assert summary["remaining_pct_all"] == 0.0
    else:  # what is left is the batch norm, counted in "all" only
        assert summary["sparsity"]["all"]["nonzero"] == sum(int(final["state_dict"][n].count_nonzero()) for n in bn)
        assert summary["sparsity"]["all"]["nonzero"] >= bn_count // 2  # the gains at least
        assert summary["sparsity"]["prunable"]["params"] == sum(t.numel() for t in initial.values()) - bn_count
