"""Values at their extremes are refused before any work (exit 2, the key named, no run folder)
rather than ending in a traceback or in a run that cannot do what was asked: a seed beyond the
64-bit range, a validation split that takes every training image, a gmp window after the run's
last step or epoch, a compression target beyond the network's size, a warm-up as long as the run.
Values just inside each bound still train."""

from __future__ import annotations

import pytest

from conftest import run_in_process

TINY = ["data=synthetic", "data.num_train=200", "data.num_test=50", "trainer.epochs=1", "trainer.device=cpu",
        "trainer.progress=false"]  # the main job: gmp; 180 training images in 2 steps of 100


@pytest.mark.parametrize("override, expected", [
    ("trainer.seed=18446744073709551616", "trainer.seed=18446744073709551616 is outside the seeds PyTorch takes"),
    ("trainer.seed=9223372036854775806", "use an integer from -9223372036854775808 to 9223372036854775805"),
    ("trainer.seed=-9223372036854775809", "is outside the seeds PyTorch takes"),
    ("data.val_fraction=0.999", "data.val_fraction=0.999 holds out every training image"),
    ("prune.end_step=3", "prune.end_step=3 comes after the run's last step, 2 (1 epoch of 2 steps)"),
    ("prune.start_step=2", "prune.start_step=2 comes at or after the run's last step, 2"),
    ("prune.start_epoch=2", "prune.start_epoch=2 comes after the last epoch (trainer.epochs=1)"),
    ("prune.target=1e9x", "prune.target=1e9x would keep 0 of the network's 266,610 prunable parameters"),
    ("prune.target=50000x", "fewer than one for each of its 6 tensors"),
    ("trainer.warmup_epochs=1", "trainer.warmup_epochs=1 covers the whole run (trainer.epochs=1)"),
    ("prune=search prune.start_epoch=18446744073709551616", "prune.start_epoch=18446744073709551616 comes after "
                                                            "the last epoch (trainer.epochs=1): prune=search would "
                                                            "never prune"),
    ("prune=fixed prune.start_epoch=2", "prune=fixed would never prune"),
    ("data.split_seed=18446744073709551616", "data.split_seed=18446744073709551616 is outside the seeds PyTorch "
                                             "takes"),
    ("data.num_classes=18446744073709551616", "data.num_classes=18446744073709551616 classes need"),
])
def test_an_extreme_value_is_refused_before_any_work(tmp_path, monkeypatch, capsys, in_process_cli,
                                                     override, expected):
    monkeypatch.chdir(tmp_path)
    assert run_in_process("train", *TINY, *override.split(), "hydra.run.dir=run") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("override", ["trainer.seed=9223372036854775805", "trainer.seed=-9223372036854775808",
                                      "data.split_seed=18446744073709551615",
                                      "prune.end_step=2", "prune.start_step=1", "prune.target=44435x",
                                      "data.val_fraction=0.99"])
def test_the_value_just_inside_each_bound_trains(tmp_path, monkeypatch, in_process_cli, override):
    monkeypatch.chdir(tmp_path)
    assert run_in_process("train", *TINY, *override.split(), "hydra.run.dir=run") == 0
    assert (tmp_path / "run" / "model.pt").is_file()
