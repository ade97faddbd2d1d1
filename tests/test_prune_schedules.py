"""The pruning-schedule hooks as the training loop calls them: ``after_step`` after every
training step for a schedule that asks for it (``steps``), never in the dense warm-up, and a
schedule's own state carried through a stop and resume. Then gradual magnitude pruning
(``prune=gmp``): the sparsity after every step against the cubic schedule computed here, the
exact final sparsity, and ``Masks.keep_largest_`` against a sort in plain Python."""

from __future__ import annotations

import signal

import pytest
import torch

from sensreg.method import prune_schedules
from sensreg.records.checkpoint import load_checkpoint
from sensreg.run.config import ConfigError, TrainConfig
from sensreg.run.interrupt import Interrupted
from sensreg.method.prune_schedules import GradualMagnitude, PruneSchedule, target_sparsity
from sensreg.method.pruning import Masks, prunable_names
from torch import nn
from sensreg.run.lifecycle import resume_state, train
from sensreg.run.loop import TrainStep

from conftest import metrics_without_time, stop_at_step

BATCHES = 6  # 297 training samples (330, less 10 % held out for validation) in batches of 50


class RisingThreshold(PruneSchedule):
    """Prunes |w| below 2e-4 × (the number of steps so far) after every step: the result
    depends on every call, in order, and on the count carried in its state."""

    name = "rising"
    steps = True
    STATE = PruneSchedule.STATE + ("count",)
    calls: list[tuple[int, int]] = []  # (epoch, batch) of every after_step, in this process

    def __init__(self, prune_cfg, epochs):
        super().__init__(prune_cfg, epochs)
        self.count = 0

    def after_step(self, epoch, batch, ctx):
        RisingThreshold.calls.append((epoch, batch))
        self.count += 1
        if ctx.masks.prune_below_(2e-4 * self.count, ctx.optimizer):
            self.threshold = 2e-4 * self.count


@pytest.fixture
def rising(monkeypatch):
    monkeypatch.setitem(prune_schedules.PRUNE_SCHEDULES, "rising", RisingThreshold)
    RisingThreshold.calls = []
    return RisingThreshold


def config(**trainer) -> TrainConfig:
    return TrainConfig.from_dict({
        "data": {"name": "synthetic", "num_train": 330, "num_test": 100, "noise": 3.0},
        "sens": {"name": "spec", "lam": 1e-3},
        "prune": {"name": "rising"},
        "trainer": {"epochs": 3, "batch_size": 50, "device": "cpu", "deterministic": True,
                    "progress": False, **trainer},
    })


def test_after_step_follows_every_step_after_the_warm_up(tmp_path, rising):
    summary = train(config(warmup_epochs=1), tmp_path)
    assert summary["status"] == "completed"
    assert rising.calls == [(e, b) for e in (2, 3) for b in range(BATCHES)]  # none in the dense epoch 1
    thresholds = [float(r["threshold"]) for r in metrics_without_time(tmp_path)]
    assert thresholds[0] == 0.0 and thresholds[2] == pytest.approx(2e-4 * 2 * BATCHES)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    for name, mask in ckpt["masks"].items():
        assert (ckpt["state_dict"][name][~mask] == 0).all(), name


def test_a_step_schedule_resumes_exactly(tmp_path, rising, monkeypatch):
    cfg = config()
    train(cfg, tmp_path / "full")
    original = TrainStep.__call__
    seen = {"n": 0}

    def stop_in_epoch_2(self, *args, **kwargs):
        seen["n"] += 1
        if seen["n"] == BATCHES + 3:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", stop_in_epoch_2)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(TrainStep, "__call__", original)
    train(cfg, tmp_path / "cut", resume_state(cfg, tmp_path / "cut" / "last.pt"))

    full, cut = (load_checkpoint(tmp_path / r / "model.pt") for r in ("full", "cut"))
    for name, tensor in full["state_dict"].items():
        assert torch.equal(tensor, cut["state_dict"][name]), name
    for name, mask in full["masks"].items():
        assert torch.equal(mask, cut["masks"][name]), name
    assert metrics_without_time(tmp_path / "full") == metrics_without_time(tmp_path / "cut")


# --- gradual magnitude pruning ---------------------------------------------------------------------

def gmp_config(sens: str = "none", epochs: int = 3, **prune) -> TrainConfig:
    return TrainConfig.from_dict({
        "data": {"name": "synthetic", "num_train": 330, "num_test": 100, "noise": 3.0},
        "sens": {"name": sens, "lam": 1e-3},
        "prune": {"name": "gmp", "every": 2, "target": 0.9, **prune},
        "trainer": {"epochs": epochs, "batch_size": 50, "device": "cpu", "deterministic": True,
                    "progress": False},
    })


def cubic(t: int, t0: int, t1: int, s_i: float, s_f: float) -> float:
    """Zhu & Gupta's schedule, written out: s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3."""
    return s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3


def kept_after_every_step(monkeypatch) -> list[list[int]]:
    """Records, after every gmp step hook, how many entries each prunable tensor keeps."""
    seen = []
    original = GradualMagnitude.after_step

    def recording(self, epoch, batch, ctx):
        original(self, epoch, batch, ctx)
        seen.append([int(m.sum()) for m in ctx.masks.masks])

    monkeypatch.setattr(GradualMagnitude, "after_step", recording)
    return seen


@pytest.mark.parametrize("sens", ["none", "spec"])
def test_gmp_follows_the_cubic_schedule_step_by_step(tmp_path, monkeypatch, sens):
    seen = kept_after_every_step(monkeypatch)
    cfg = gmp_config(sens, start_epoch=2, initial=0.2, target="20x")  # window: steps 6 to 18
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed"
    total = sum(seen[0])
    kept = [sum(k) for k in seen]
    assert len(kept) == 3 * BATCHES  # every step of the run
    expected, held = [], total
    for t in range(1, 3 * BATCHES + 1):
        if 6 <= t <= 18 and (t - 6) % 2 == 0:  # pruning steps: every 2nd of the window, and its end
            held = min(held, total - round(cubic(t, 6, 18, 0.2, 1 - 1 / 20) * total))
        expected.append(held)
    assert kept == expected
    assert kept[5] == total - round(0.2 * total)  # the window's first step prunes to s_i
    assert kept[-1] == total - round(0.95 * total)  # exactly the target at its end
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert sum(int(m.sum()) for m in ckpt["masks"].values()) == kept[-1]
    for name, mask in ckpt["masks"].items():
        assert (ckpt["state_dict"][name][~mask] == 0).all(), name
        assert mask.any(), f"{name} was emptied"
    decisions = summary["thresholds"]
    assert [d["step"] for d in decisions] == [6, 8, 10, 12, 14, 16, 18]
    assert [d["sparsity"] for d in decisions] == pytest.approx([cubic(t, 6, 18, 0.2, 0.95) for t in range(6, 19, 2)])


def test_gmp_after_its_window_holds_the_target_and_steps_may_set_the_window(tmp_path, monkeypatch):
    seen = kept_after_every_step(monkeypatch)
    train(gmp_config(start_step=1, end_step=7, every=3, target=0.5), tmp_path)
    kept = [sum(k) for k in seen]
    total = sum(int(m.numel()) for m in load_checkpoint(tmp_path / "model.pt")["masks"].values())
    prunes_at = {1: cubic(1, 1, 7, 0, 0.5), 4: cubic(4, 1, 7, 0, 0.5), 7: 0.5}
    held, expected = total, []
    for t in range(1, 3 * BATCHES + 1):
        if t in prunes_at:
            held = total - round(prunes_at[t] * total)
        expected.append(held)
    assert kept == expected and kept[-1] == total - round(0.5 * total)


def test_gmp_layer_scope_prunes_every_tensor_to_the_same_sparsity(tmp_path, monkeypatch):
    seen = kept_after_every_step(monkeypatch)
    train(gmp_config(scope="layer", target=0.8), tmp_path)
    sizes = [int(m.numel()) for m in load_checkpoint(tmp_path / "model.pt")["masks"].values()]
    assert seen[-1] == [n - round(0.8 * n) for n in sizes]


def test_keep_largest_keeps_exactly_the_largest_never_regrows_and_never_empties_a_tensor():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # the second layer's weights are all the smallest
        model[0].weight[0, :3] = 0.5  # ties
    masks = Masks(model, ["0.weight", "1.weight"])
    masks.masks[0][1, 1] = False  # already pruned: must stay pruned whatever its |w|
    masks._masks_changed()
    with torch.no_grad():
        model[0].weight[1, 1] = 10.0
    values = [(float(p.detach().abs().flatten()[i]), k, i) for k, (p, m) in enumerate(zip(masks.params, masks.masks))
              for i in range(p.numel()) if bool(m.flatten()[i])]
    pruned, largest = masks.keep_largest_(12)
    # every tensor keeps its largest entry; then the 10 largest others, the first in order on a tie
    first = [max((v for v in values if v[1] == k), key=lambda v: (v[0], -v[2])) for k in (0, 1)]
    rest = sorted((v for v in values if v not in first), key=lambda v: (-v[0], v[1], v[2]))[:10]
    want = set(first + rest)
    assert [(k, i) for k, m in enumerate(masks.masks) for i in range(m.numel()) if bool(m.flatten()[i])] \
        == sorted((k, i) for _, k, i in want)
    assert pruned == len(values) - 12 and not masks.masks[0][1, 1]
    assert largest == max(v[0] for v in values if v not in want)
    assert int(masks.masks[1].sum()) == 1
    assert masks.keep_largest_(50) == (0, 0.0)  # more than it keeps: nothing regrows
    assert masks.keep_largest_([3, 1])[0] == 12 - 4 and [int(m.sum()) for m in masks.masks] == [3, 1]


@pytest.mark.parametrize("target, sparsity", [(0.99, 0.99), ("100x", 0.99), ("4X", 0.75), (0, 0.0), ("1x", 0.0)])
def test_a_target_is_a_sparsity_or_a_compression(target, sparsity):
    assert target_sparsity(target) == pytest.approx(sparsity)


@pytest.mark.parametrize("prune, message", [
    ({"target": 1.0}, r"prune.target=1.0 is neither a sparsity in \[0, 1\)"),
    ({"target": "0.5x"}, r"prune.target='0.5x' is neither"),
    ({"target": "lots"}, r"prune.target='lots' is neither"),
    ({"target": None}, r"prune.target=None is neither"),
    ({"target": 0.5, "initial": 0.6}, r"prune.initial=0.6 must lie between 0 and the target sparsity 0.5"),
    ({"start_step": 8, "end_step": 4}, r"prune.end_step=4 must come after prune.start_step=8"),
    ({"every": 0}, r"prune.every=0 must be a number >= 1"),
])
def test_bad_gmp_settings_are_refused_before_training(prune, message):
    with pytest.raises(ConfigError, match=message):
        gmp_config(**prune)


def test_the_summary_records_the_training_budget_also_of_a_resumed_run(tmp_path, monkeypatch):
    cfg = gmp_config()
    full = train(cfg, tmp_path / "full")["budget"]
    assert {k: full[k] for k in ("epochs", "steps", "samples", "device")} == \
        {"epochs": 3, "steps": 3 * BATCHES, "samples": 3 * 297, "device": "cpu"}  # 297 of 330 train
    assert full["wall_time_s"] > 0
    stop_at_step(monkeypatch, BATCHES + 2)
    with pytest.raises(Interrupted):
        train(cfg, tmp_path / "cut")
    monkeypatch.undo()
    resumed = train(cfg, tmp_path / "cut", resume_state(cfg, tmp_path / "cut" / "last.pt"))["budget"]
    assert {k: v for k, v in resumed.items() if k != "wall_time_s"} == {k: v for k, v in full.items() if k != "wall_time_s"}


def test_the_report_of_a_gmp_run_draws_its_pruning_by_steps(tmp_path):
    from sensreg.records.report import write_report

    train(gmp_config(), tmp_path)
    report = write_report(tmp_path, batches=0)
    assert "thresholds.png" in [p.name for p in report.images]
    assert not [n for n in report.notes if "not drawn" in n], report.notes
    assert (tmp_path / "thresholds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("prune", [
    {"name": "gmp", "every": 2, "target": 0.9},
    {"name": "fixed", "threshold": 0.05},
    {"name": "search", "patience": 0, "tolerance": 0.3},
])
def test_every_pruning_records_the_share_of_the_absolute_sum_it_removed(tmp_path, monkeypatch, prune):
    """removed_l1_pct against Σ|w| of the kept entries summed in plain Python around every cut."""
    shares = []
    original = Masks.drop_

    def kept_sum(masks):
        return sum(abs(w) for p, m in zip(masks.params, masks.masks)
                   for w, k in zip(p.detach().flatten().tolist(), m.flatten().tolist()) if k)

    def measuring(self, drops, optimizer):
        before = kept_sum(self)
        result = original(self, drops, optimizer)
        if result[0]:
            shares.append(100 * (before - kept_sum(self)) / before)
        return result

    monkeypatch.setattr(Masks, "drop_", measuring)
    cfg = TrainConfig.from_dict({
        "data": {"name": "synthetic", "num_train": 330, "num_test": 100, "noise": 3.0},
        "sens": {"name": "spec", "lam": 1e-3}, "prune": prune,
        "trainer": {"epochs": 3, "batch_size": 50, "device": "cpu", "deterministic": True, "progress": False},
    })
    decisions = train(cfg, tmp_path)["thresholds"]
    assert decisions and len(decisions) == len(shares)
    assert [d["removed_l1_pct"] for d in decisions] == pytest.approx(shares, rel=1e-9, abs=1e-12)
    for d in decisions:  # a cut by magnitude removes a smaller share of Σ|w| than of the weights
        cut = 100 * (d["remaining_pct_before"] - d["remaining_pct_after"]) / d["remaining_pct_before"]
        assert 0 < d["removed_l1_pct"] < cut


def test_the_share_of_the_absolute_sum_cut_compounds_over_a_runs_decisions():
    from sensreg.method.prune_schedules import l1_removed_in_all

    # Cutting 50 % of what is left, then 50 % of that, removes 75 % of what there was.
    assert l1_removed_in_all([{"removed_l1_pct": 50.0}, {"removed_l1_pct": 50.0}]) == pytest.approx(75.0)
    assert l1_removed_in_all([{"removed_l1_pct": 0.0}] * 5) == 0.0
    assert l1_removed_in_all([]) is None
    assert l1_removed_in_all([{"removed_l1_pct": 1.0}, {"epoch": 3}]) is None  # a decision without the record


# --- the structured baseline: whole units -------------------------------------------------------

def test_units_are_pruned_whole_weakest_first_and_the_output_layer_never():
    from sensreg.method.prune_schedules import keep_largest_units_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0.1, 0.1, 0.1, 0.1], [0.5, -0.5, 0.5, -0.5]]))
        model[0].bias.fill_(0.3)
        model[2].weight.fill_(0.01)  # weakest of all, but the classes are never pruned
    masks = Masks(model, prunable_names(model, "all"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()  # momentum buffers to clear
    with torch.no_grad():  # (the step moved them; put the scores back)
        model[0].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0.1, 0.1, 0.1, 0.1], [0.5, -0.5, 0.5, -0.5]]))
    total = masks.total()  # 12 + 3 + 6 + 2 = 23
    pruned, _ = keep_largest_units_(masks, total - 1, opt)  # one entry less: the weakest unit, whole
    assert pruned == 5  # unit 1: four weights and its bias
    assert masks.masks[0][1].sum() == 0 and masks.masks[1][1] == 0 and masks.masks[0][[0, 2]].all()
    assert masks.masks[2].all() and masks.masks[3].all()
    assert float(model[0].weight[1].abs().sum()) == 0.0 and float(model[0].bias[1]) == 0.0
    assert float(opt.state[model[0].weight]["momentum_buffer"][1].abs().sum()) == 0.0
    # Asked for far fewer, it stops at one unit a layer: the strongest, unit 0.
    keep_largest_units_(masks, 0, opt)
    assert masks.masks[0].flatten(1).any(1).tolist() == [True, False, False]
    assert masks.masks[2].all()


def test_a_run_with_the_structured_baseline_removes_units(tmp_path, in_process_cli):
    import json

    from conftest import run_in_process

    run = tmp_path / "run"
    assert run_in_process("train", "~experiment", "data=synthetic", "data.num_train=300", "data.num_test=100",
                          "trainer.epochs=2", "trainer.batch_size=50", "trainer.device=cpu", "trainer.progress=false",
                          "sens=none", "prune=gmp_units", "prune.target=5x", "prune.every=1",
                          f"hydra.run.dir={run}") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["compression"] >= 5.0  # the target, reached by whole units (and a little past)
    units = summary["structure"]["units"]
    assert units["fc1"][0] < 300 and units["fc2"][0] < 100 and units["fc3"] == [10, 10]
    assert summary["structure"]["macs"]["compact"] <= summary["structure"]["macs"]["dense"] / 4


class HalveTheKept(PruneSchedule):
    """A toy schedule, as docs/extending.md adds one: after every epoch of its window, it prunes
    the smaller half (by |w|) of the entries still kept, down to ``prune.target`` of them kept."""

    name = "halve"
    READS = ("target", "start_epoch", "stop_epoch")
    SEARCH = {"prune.target": "interval(0.5, 0.9)"}

    @classmethod
    def check_own(cls, prune, epochs, p):
        if not (isinstance(prune.target, float) and 0 < prune.target < 1):
            p.add("prune.target", f"prune.target={prune.target!r} must be a sparsity between 0 and 1; "
                                  f"prune=halve halves the kept weights down to it.")

    def after_epoch(self, epoch, val, ctx):
        if not self.active(epoch):
            return val
        masks = ctx.masks
        kept = max(masks.kept() // 2, masks.total() - round(self.cfg.target * masks.total()))
        pruned, largest = masks.keep_largest_(kept, ctx.optimizer)
        self.record({"epoch": epoch, "threshold": largest, "pruned": pruned})
        return ctx.validate()


def test_a_prune_schedule_added_as_one_class_and_one_option_file_trains(tmp_path, monkeypatch, in_process_cli):
    # What docs/extending.md walks through: the class, registered, and its option file (here on a
    # search path of the user's, as hydra.searchpath finds it); nothing else is edited.
    import importlib
    import json

    from conftest import composed, run_in_process

    monkeypatch.setitem(prune_schedules.PRUNE_SCHEDULES, "halve", HalveTheKept)
    (tmp_path / "configs" / "prune").mkdir(parents=True)
    (tmp_path / "configs" / "prune" / "halve.yaml").write_text(
        "defaults: [/schema.prune.halve@_here_, _self_]\ntarget: 0.75\n")
    importlib.import_module("sensreg.configs").register_schema_nodes()  # as its first import does
    search_path = f"hydra.searchpath=[file://{tmp_path / 'configs'}]"

    node = composed("~experiment", search_path, "prune=halve")["prune"]
    assert node["target"] == 0.75 and node["patience"] is None and node["threshold"] is None  # unread: null
    assert node["start_epoch"] == 1 and node["params"] == "all"
    small = ["~experiment", "data=synthetic", "data.num_train=300", "data.num_test=100", "trainer.epochs=2",
             "trainer.batch_size=50", "trainer.device=cpu", "trainer.progress=false", "sens=spec", search_path]
    run = tmp_path / "run"
    assert run_in_process("train", *small, "prune=halve", f"hydra.run.dir={run}") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [t["epoch"] for t in summary["thresholds"]] == [1, 2]
    assert summary["compression"] == pytest.approx(4.0, rel=1e-4)  # halved twice: a quarter kept, the target
    # Its own check refuses a bad value before training; a key it does not read is refused too.
    for bad in ("prune.target=2", "prune.patience=3"):
        assert run_in_process("train", *small, "prune=halve", bad, f"hydra.run.dir={tmp_path / 'bad'}") == 2, bad
        assert not (tmp_path / "bad" / "summary.json").exists()
