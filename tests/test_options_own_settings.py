"""Each option of the data, optim and prune groups owns the keys it reads: its composed node holds
those and no others, a key it does not read is refused, and its own checks run. An optimizer
is added as one class and one option file, as a prune schedule is (test_prune_schedules.py)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from sensreg.data import DATASETS
from sensreg.data.registry import EVERY_DATASET_READS
from sensreg.run import optimizers
from sensreg.run.config import ConfigError, TrainConfig
from sensreg.run.config_groups import key_readers

from conftest import composed, run_in_process


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_a_datasets_option_holds_the_keys_every_dataset_reads_and_its_own(name):
    spec = DATASETS[name]
    node = composed("~experiment", f"data={name}")["data"]
    assert list(node) == [k for k in TrainConfig().data.__dataclass_fields__ if spec.reads(k)]
    assert set(node) == set(EVERY_DATASET_READS) | set(spec.own_keys)


@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
def test_an_optimizers_option_holds_its_name_lr_and_the_keys_it_reads(name):
    node = composed("~experiment", f"optim={name}")["optim"]
    assert set(node) == {"name", "lr", *optimizers.OPTIMIZERS[name].READS}


def test_the_readers_of_a_key_come_from_the_options_that_own_it():
    assert key_readers("optim", "betas") == ("adam",) and key_readers("optim", "lr") is None
    assert key_readers("data", "num_train") == ("synthetic",)
    assert set(key_readers("data", "augment")) == {"cifar10", "cifar100", "imagenet"}


def test_an_optimizers_own_checks_name_the_key_and_the_fix():
    raw = composed("~experiment", "optim=adam", "optim.betas=[0.9,1.5]", "optim.eps=-1")
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(raw)
    assert "optim.betas=[0.9, 1.5] must both lie in [0, 1)" in str(err.value)
    assert "optim.eps=-1 must be a number >= 0" in str(err.value)
    # and SGD's own, which Adam does not read
    raw = composed("~experiment", "optim.momentum=1.0")
    with pytest.raises(ConfigError, match="optim.momentum=1.0 must be below 1"):
        TrainConfig.from_dict(raw)


class PlainSGD(optimizers.Optimizer):
    """SGD without momentum: reads the learning rate only."""

    name = "plain"
    DEFAULT_LR = 0.1

    @classmethod
    def build(cls, params, optim):
        return torch.optim.SGD(params, lr=optim.lr)


def test_an_optimizer_added_as_one_class_and_one_option_file_trains(tmp_path, monkeypatch, in_process_cli):
    monkeypatch.setitem(optimizers.OPTIMIZERS, "plain", PlainSGD)
    (tmp_path / "configs" / "optim").mkdir(parents=True)
    (tmp_path / "configs" / "optim" / "plain.yaml").write_text("defaults: [/schema.optim.plain@_here_, _self_]\n")
    importlib.import_module("sensreg.configs").register_schema_nodes()  # as its first import does
    search_path = f"hydra.searchpath=[file://{tmp_path / 'configs'}]"

    assert composed("~experiment", search_path, "optim=plain")["optim"] == {"name": "plain", "lr": None}
    small = ["~experiment", "data=synthetic", "data.num_train=300", "data.num_test=100", "trainer.epochs=1",
             "trainer.batch_size=50", "trainer.device=cpu", "trainer.progress=false", "sens=spec",
             "prune=none", search_path, "optim=plain"]
    run = tmp_path / "run"
    assert run_in_process("train", *small, f"hydra.run.dir={run}") == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert "lr: 0.1" in (run / "config.yaml").read_text()  # its own default, recorded
    # A key it does not read is refused before training.
    assert run_in_process("train", *small, "optim.momentum=0.5", f"hydra.run.dir={tmp_path / 'bad'}") == 2
    assert not (tmp_path / "bad" / "summary.json").exists()
