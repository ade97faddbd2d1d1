"""The shipped YAML configs and the typed config agree, and every preset composes and validates."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from importlib import resources

import pytest
import yaml

from sensreg.records.config_keys import LATER_KEYS, NOT_COMPUTATION, upgrade_config
from sensreg.run.config import ConfigError, TrainConfig
from sensreg.run.config_diff import config_differences
from sensreg.run.config_groups import GROUP_SCHEMAS, option_node
from sensreg.data import DATASETS
from sensreg.method.prune_schedules import PRUNE_SCHEDULES
from sensreg.method.sensitivity import VARIANTS

from conftest import composed


def test_dataclass_defaults_are_the_shipped_defaults():
    # Code that builds TrainConfig() directly trains what the config groups' own defaults do
    # (`sensreg train ~experiment`): the main job is a preset on top of them.
    assert TrainConfig.from_dict(composed("~experiment")) == TrainConfig()


@pytest.mark.parametrize("group", list(GROUP_SCHEMAS))
def test_every_option_file_starts_from_its_schema_node_and_holds_presets_only(group):
    # The schema (run/config.py) is the one home of the defaults: an option file names its own
    # node first and sets only the values that differ from it. Composed, the option has exactly
    # the keys the schema gives it, and the dataclass accepts them all.
    folder = resources.files("sensreg.configs") / group
    for path in (p for p in folder.iterdir() if p.name.endswith(".yaml")):
        option = path.name.removesuffix(".yaml")
        raw = yaml.safe_load(path.read_text())
        assert raw["defaults"] == [f"/schema.{group}.{option}@_here_", "_self_"], path.name
        node = option_node(group, option)
        presets = {k: v for k, v in raw.items() if k != "defaults"}
        assert set(presets) <= set(node), (path.name, sorted(set(presets) - set(node)))
        assert not [k for k, v in presets.items() if node[k] == v], f"{path.name} repeats a schema default"
        section = "eta_schedule" if group == "schedule" else group
        value = composed("~experiment", f"{group}@{section}={option}" if group == "schedule" else f"{group}={option}")[section]
        assert value == node | presets | ({"params": "all"} if group == "prune" else {})
        assert set(value) <= {f.name for f in fields(GROUP_SCHEMAS[group])}


def test_an_option_reads_only_its_own_keys_of_the_schema():
    # sgd has no betas, adam no momentum: Hydra refuses optim.betas with sgd, as before the schema.
    assert set(option_node("optim", "sgd")) == {"name", "lr", "momentum", "nesterov"}
    assert set(option_node("optim", "adam")) == {"name", "lr", "betas", "eps"}
    assert option_node("optim", "adam")["betas"] == [0.9, 0.999]  # a list, as OmegaConf holds it
    assert set(option_node("data", "mnist")) == {"name", "root", "val_fraction", "split_seed", "on_device",
                                                 "eval_batch_size"}
    assert option_node("prune", "gmp")["params"] == "${sens.params}"
    # an option the schema does not name (a user's new dataset) gets the keys every option reads
    assert set(option_node("data", "my_own_dataset")) == set(option_node("data", "mnist"))
    assert option_node("data", "my_own_dataset")["name"] == "my_own_dataset"
    with pytest.raises(Exception, match="betas"):
        composed("optim=sgd", "optim.betas=[0.8,0.9]")


def test_the_main_job_is_the_default_preset_and_a_named_preset_replaces_it():
    main = TrainConfig.from_dict(composed())
    assert main == TrainConfig.from_dict(composed(
        "~experiment", "prune=gmp", "prune.target=0.955", "prune.stop_epoch=0.8",
        "schedule@eta_schedule=step", "eta_schedule.milestones=[0.8]"))
    assert main.model.name == "lenet300" and main.sens.name == "spec" and main.trainer.epochs == 20
    assert composed("experiment=default") == composed()
    assert composed("experiment=lenet300_quick")["prune"]["name"] == "search"  # nothing of the main job left
    # A group chosen on the command line replaces the main job's choice; its values stay
    assert composed("prune=search")["prune"] | {"target": None} == composed(
        "~experiment", "prune=search", "prune.stop_epoch=0.8")["prune"]


def experiments() -> list[str]:
    folder = resources.files("sensreg.configs") / "experiment"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


@pytest.mark.parametrize("name", experiments())
def test_every_experiment_preset_composes_and_validates(name):
    folder = resources.files("sensreg.configs") / "experiment"
    assert (folder / f"{name}.yaml").read_text().startswith("# @package _global_")
    TrainConfig.from_dict(composed(f"experiment={name}"))


@pytest.mark.parametrize("group,options", [
    # sens, prune and data: every name in the registry (models: test_models.py; not all take MNIST)
    ("model", ["lenet300", "lenet5"]), ("sens", list(VARIANTS)),
    ("optim", ["sgd", "adam"]), ("prune", list(PRUNE_SCHEDULES)),
    ("schedule@eta_schedule", ["constant", "step", "cosine"]),
    ("schedule@lam_schedule", ["constant", "step", "cosine", "follow_eta"]),
    ("data", list(DATASETS)),
])
def test_every_group_option_composes_and_validates(group, options):
    for option in options:
        cfg = TrainConfig.from_dict(composed(f"{group}={option}"))
        section = group.partition("@")[2] or group
        assert getattr(cfg, section).name == option


def test_all_problems_are_reported_together():
    raw = composed("sens.lam=-1", "trainer.epochs=0", "data.val_fraction=1.5", "prune.start_epoch=3",
                   "prune.stop_epoch=2")
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(raw)
    message = str(err.value)
    for key in ("sens.lam=-1", "trainer.epochs=0", "data.val_fraction=1.5", "prune.stop_epoch=2 must be a number >= 3"):
        assert key in message


def test_a_model_that_cannot_take_the_datasets_inputs_is_refused():
    # VGG-16's five poolings need 32x32 inputs; MNIST has 28x28. Refused before anything loads.
    with pytest.raises(ConfigError, match=r"model.name=vgg16 cannot train on data.name=mnist \(inputs 1x28x28\)"):
        TrainConfig.from_dict(composed("model=vgg16"))
    TrainConfig.from_dict(composed("model=resnet20"))  # its first conv takes any channel count


def test_only_lambda_can_follow_eta():
    with pytest.raises(ConfigError, match="eta_schedule.name='follow_eta' is not one of"):
        TrainConfig.from_dict(composed("schedule@eta_schedule=follow_eta"))


def test_lambda_of_one_or_more_is_refused():
    with pytest.raises(ConfigError, match=r"sens.lam=1.0 must be below 1"):
        TrainConfig.from_dict(composed("sens.lam=1.0"))


def test_lambda_raised_by_its_schedule_to_one_is_refused():
    with pytest.raises(ConfigError, match=r"times the eta schedule it follows reaches 3 in epoch 3"):
        TrainConfig.from_dict(composed("sens.lam=0.03", "schedule@eta_schedule=step", "eta_schedule.milestones=[2]",
                                       "eta_schedule.gamma=100"))
    TrainConfig.from_dict(composed("sens.lam=0.03", "schedule@eta_schedule=step", "eta_schedule.milestones=[2]",
                                   "eta_schedule.gamma=100", "schedule@lam_schedule=constant"))


def test_hash_ignores_seed_and_device_but_not_lambda():
    base = TrainConfig.from_dict(composed())
    assert TrainConfig.from_dict(composed("trainer.seed=7", "trainer.device=cpu")).hash() == base.hash()
    assert TrainConfig.from_dict(composed("sens.lam=1e-5")).hash() != base.hash()


def test_a_key_added_later_keeps_old_configs_hash_and_resumable():
    # data.augment=false does what runs saved before the key existed did: their configs keep
    # their hash (computed as it was then, without the key) and resume without a difference.
    # (Likewise every other key added later, at its old value; saved configs lack them all.)
    cfg = TrainConfig.from_dict(composed("~experiment"))  # the main job sets prune.target, a later key
    old = cfg.to_dict()
    for section, key in LATER_KEYS:
        del old[section][key]
    stripped = {section: dict(values) for section, values in old.items()}
    del stripped["trainer"]["seed"]
    for section, key in NOT_COMPUTATION:
        stripped[section].pop(key, None)
    old_hash = hashlib.sha256(json.dumps(stripped, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert cfg.hash() == old_hash
    assert config_differences(old, cfg.to_dict()) == []
    augmented = TrainConfig.from_dict(composed("~experiment", "+data.augment=true"))
    assert augmented.hash() != cfg.hash()
    assert config_differences(old, augmented.to_dict()) == ["data.augment: False in the saved run, True now"]


@pytest.mark.parametrize("override, message", [
    ("trainer.batch_size=1.5", "trainer.batch_size=1.5 must be an integer."),
    ("trainer.epochs=abc", "trainer.epochs='abc' must be an integer."),
    ("prune.patience=0.5", "prune.patience=0.5 must be an integer (or null)."),
    ("sens.lam=small", "sens.lam='small' must be a finite number."),
    ("trainer.channels_last=3", "trainer.channels_last=3 must be true or false."),
    ("eta_schedule.milestones=[1.5]", "eta_schedule.milestones=1.5: a float is a fraction of the run"),
])
def test_a_value_of_the_wrong_type_is_named_once(override, message):
    overrides = [override] + (["schedule@eta_schedule=step"] if "milestones" in override else [])
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(composed(*overrides))
    text = str(err.value)
    assert message in text
    key = override.split("=")[0]
    assert text.count(f"{key}=") == 1  # the range check does not repeat it


@pytest.mark.parametrize("overrides, message", [
    (["sens.reduction=mean"], "sens.reduction='mean' is not one of: batch, sample."),
    (["sens.scale=log"], "sens.scale='log' is not one of: none, gamma, max."),
    (["sens.scale_over=layer"], "sens.scale_over='layer' is not one of: tensor, all."),
    (["sens.gamma=0"], "sens.gamma=0 must be a positive, finite number"),
    (["sens.gamma=inf"], "sens.gamma=inf must be a finite number"),
    (["sens.reduction=sample", "trainer.compile=true"], "set trainer.compile=false or sens.reduction=batch"),
])
def test_bad_sensitivity_reduction_and_scale_are_refused(overrides, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(composed(*overrides))
    assert message in str(err.value)


# --- values that no comparison catches ---------------------------------------------------------------

@pytest.mark.parametrize("section, key", [("sens", "lam"), ("prune", "tolerance"), ("optim", "lr"),
                                          ("optim", "momentum")])
def test_nan_is_refused_where_a_number_is_asked_for(section, key):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}=nan must be a finite number"):
        TrainConfig.from_dict({section: {key: float("nan")}})


@pytest.mark.parametrize("milestones", [["abc"], "abc", [10, "x"]])
@pytest.mark.parametrize("schedule", ["eta_schedule", "lam_schedule"])
def test_a_milestone_that_is_not_a_number_is_a_message_not_a_traceback(schedule, milestones):
    with pytest.raises(ConfigError, match=rf"{schedule}\.milestones=.* must be a list of epochs or of fractions"):
        TrainConfig.from_dict({schedule: {"name": "step", "milestones": milestones}})


def test_epochs_counted_back_from_the_last_stretch_with_the_run_and_are_checked():
    from sensreg.method.prune_schedules import build_prune_schedule
    from sensreg.method.regularizer import step

    back_from_end = ("prune.stop_epoch=-4", "eta_schedule.milestones=[-4]")
    for epochs in (5, 20, 60):
        back, forth = step([-4]), step([epochs - 4])
        assert [back(e, epochs) for e in range(epochs)] == [forth(e, epochs) for e in range(epochs)]
        cfg = TrainConfig.from_dict(composed("trainer.epochs=%d" % epochs, *back_from_end))
        schedule = build_prune_schedule(cfg.prune, epochs)
        assert schedule.stop_epoch == epochs - 4 and schedule.window(10) == (0, (epochs - 4) * 10)
        assert schedule.active(epochs - 4) and not schedule.active(epochs - 3)
    with pytest.raises(ConfigError, match=r"prune.stop_epoch=-4 counts back .* epoch -1, before"):
        TrainConfig.from_dict(composed("trainer.epochs=3", *back_from_end))
    with pytest.raises(ConfigError, match=r"eta_schedule.milestones: -30 counts back"):
        TrainConfig.from_dict(composed("trainer.epochs=20", "eta_schedule.milestones=[-30]"))
    TrainConfig.from_dict(composed("trainer.epochs=5", *back_from_end))  # epoch 1: still a window


@pytest.mark.parametrize("epochs", [1, 2, 3, 5, 20, 61])
def test_the_main_job_keeps_its_shape_at_every_length(epochs):
    # Its window and eta drop are fractions of the run (0.8): at 20 epochs the same as the
    # epochs 16 it gave before; with one epoch the pruning ends within the epoch, in steps.
    from sensreg.method.prune_schedules import build_prune_schedule
    from sensreg.method.regularizer import step

    cfg = TrainConfig.from_dict(composed(f"trainer.epochs={epochs}"))
    gmp = build_prune_schedule(cfg.prune, epochs)
    steps_per_epoch = 540
    t0, t1 = gmp.window(steps_per_epoch)
    assert t0 == 0 and t1 == int(0.8 * epochs * steps_per_epoch + 0.5)
    assert gmp.sparsity_at(t1, steps_per_epoch) == pytest.approx(0.955)
    assert gmp.sparsity_at(t1 // 2, steps_per_epoch) < 0.955
    drop = step(cfg.eta_schedule.milestones, cfg.eta_schedule.gamma)
    factors = [drop(e, epochs) for e in range(epochs)]
    assert factors == [1.0] * int(0.8 * epochs + 0.5) + [pytest.approx(0.1)] * (epochs - int(0.8 * epochs + 0.5))
    if epochs == 20:  # what the main job did with epochs counted back from the last (-4)
        before = TrainConfig.from_dict(composed("prune.stop_epoch=-4", "eta_schedule.milestones=[-4]"))
        old = build_prune_schedule(before.prune, epochs)
        assert old.window(steps_per_epoch) == (t0, t1)
        assert [step(before.eta_schedule.milestones)(e, epochs) for e in range(epochs)] == factors


def test_positions_as_fractions_of_the_run_for_epoch_schedules_and_in_the_config_check():
    from sensreg.method.positions import epoch_at, first_epoch_at, step_at
    from sensreg.method.prune_schedules import build_prune_schedule

    assert [epoch_at(0.8, n) for n in (1, 2, 3, 5, 20)] == [1, 2, 2, 4, 16]
    assert first_epoch_at(0.5, 20) == 11 and first_epoch_at(0.0, 20) == 1 and first_epoch_at(3, 20) == 3
    assert step_at(0.5, 1, 540) == 270 and step_at(3, 20, 10) == 30 and step_at(3, 20, 10, first=True) == 20
    search = TrainConfig.from_dict(composed("~experiment", "trainer.epochs=10", "prune.start_epoch=0.5",
                                            "prune.stop_epoch=0.8")).prune
    schedule = build_prune_schedule(search, 10)
    assert [e for e in range(1, 11) if schedule.active(e)] == [6, 7, 8]
    gmp = build_prune_schedule(TrainConfig.from_dict(composed("prune.start_epoch=0.25")).prune, 20)
    assert gmp.window(100) == (500, 1600)
    for bad, message in (("prune.stop_epoch=1.5", r"prune.stop_epoch=1.5: a float is a fraction of the run"),
                         ("eta_schedule.milestones=[16.0]", r"eta_schedule.milestones=16.0: a float is a fraction"),
                         ("prune.start_epoch=-0.5", r"prune.start_epoch=-0.5: a float is a fraction")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig.from_dict(composed(bad))
    with pytest.raises(ConfigError, match=r"prune.stop_epoch=0.2 comes before prune.start_epoch=0.5"):
        TrainConfig.from_dict(composed("prune.start_epoch=0.5", "prune.stop_epoch=0.2"))
    with pytest.raises(ConfigError, match=r"prune.stop_epoch='late' must be an epoch .* or a fraction"):
        TrainConfig.from_dict(composed("prune.stop_epoch=late"))


def test_a_gmp_window_past_the_last_epoch_is_refused_where_a_search_window_is_not():
    with pytest.raises(ConfigError, match=r"prune.stop_epoch=30 comes after the last epoch .* never reach"):
        TrainConfig.from_dict(composed("trainer.epochs=20", "prune.stop_epoch=30"))
    TrainConfig.from_dict(composed("trainer.epochs=20", "prune.stop_epoch=30", "prune.end_step=100"))
    TrainConfig.from_dict(composed("~experiment", "trainer.epochs=20", "prune.stop_epoch=30"))  # search


def test_every_reference_preset_keeps_the_hash_of_its_committed_runs():
    # The presets' positions are epochs (integers); the fractions of the run added later change
    # no preset's config: each composes to the hash its reference runs were saved with, so they
    # still group with new runs and resume. (The main job's positions became fractions: its hash
    # changed, and its older runs resume with prune.stop_epoch=-4 'eta_schedule.milestones=[-4]'.)
    import re

    from conftest import REPO

    script = (REPO / "scripts" / "reproduce_mnist.sh").read_text()
    runs = dict(re.findall(r'^\s+"([\w.-]+)\|([^"]+)"$', script, flags=re.M))
    assert len(runs) >= 15
    checked = 0
    for name, overrides in runs.items():
        summary = REPO / "outputs" / "reference" / name / "seed0" / "summary.json"
        if not summary.is_file():
            continue
        saved = json.loads(summary.read_text())["config_hash"]
        assert TrainConfig.from_dict(composed(*overrides.split())).hash() == saved, name
        checked += 1
    assert checked >= 15


def test_an_old_config_is_read_through_one_upgrade():
    # A config saved before sens.reduction, prune.scope, ... existed reads as having the values
    # that did what that version did; what it saved is kept, and a section it lacks stays absent.
    old = {"sens": {"name": "spec", "lam": 1e-4}, "prune": {"name": "search", "scope": "layer"}, "trainer": None}
    new = upgrade_config(old)
    assert new["sens"] == {"name": "spec", "lam": 1e-4, "reduction": "batch", "scale": "none", "gamma": 1.0,
                           "scale_over": "tensor"}
    assert new["prune"]["scope"] == "layer" and new["prune"]["target"] is None and new["prune"]["batchnorm"] is False
    assert "data" not in new and new["trainer"] is None
    assert old["sens"] == {"name": "spec", "lam": 1e-4}  # the argument is left as it was
    new["data"] = {}
    assert upgrade_config(new)["data"]["shape"] == [1, 28, 28]
    upgrade_config(new)["data"]["shape"].append(9)  # each upgrade gets its own copy of a list default
    assert LATER_KEYS[("data", "shape")] == [1, 28, 28]
    # every key the upgrade fills is a key of the schema
    assert all(key in {f.name for f in fields(GROUP_SCHEMAS["schedule" if s.endswith("schedule") else s])}
               for s, key in LATER_KEYS)
