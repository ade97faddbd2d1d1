"""Hostile values for every key of every config group option: each ends in a config the value
legitimately allows or in a refusal that names the key, never in another exception or a hang.

Three layers:
- every key of every option of every group (each option composed by Hydra as `sensreg train
  GROUP=OPTION` composes it) against a fixed list of hostile values, through
  ``TrainConfig.from_dict``, the check the CLI runs;
- random values drawn by hypothesis for random keys, the same property;
- every key of the main config against hostile values as command-line text, through the CLI's
  own entry in-process: each value the check accepts is trained (to the end, or to a run failed
  by its divergence check), and one refusal per key shows exit code 2, the key named, no
  traceback and no run folder.
"""

from __future__ import annotations

import copy
import json
import signal
from contextlib import contextmanager
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_in_process
from sensreg.run.config import ConfigError, TrainConfig

# A run small enough to finish in a second where a value is accepted.
BASE = ["~experiment", "data=synthetic", "data.num_train=64", "data.num_test=32", "trainer.epochs=1",
        "trainer.device=cpu", "trainer.batch_size=32", "trainer.progress=false"]
GROUPS = {"data": "data", "model": "model", "sens": "sens", "optim": "optim", "prune": "prune",
          "trainer": "trainer", "schedule@eta_schedule": "eta_schedule", "schedule@lam_schedule": "lam_schedule"}
# (integers beyond 64 bits; a name beyond NAME_MAX, a path beyond PATH_MAX)
HOSTILE = [float("nan"), float("inf"), float("-inf"), -1, 0, 10**12, 2**64, -(2**64), 1e30, "abc", "", "a" * 300,
           "/a" * 2100, [], ["abc"], True, None]
# A hang guard, not a speed limit: a check takes milliseconds, and a loaded machine may stall a
# process for seconds.
SECONDS_PER_CHECK = 60.0


def options(group: str) -> list[str]:
    folder = resources.files("sensreg.configs") / group.partition("@")[0]
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def base_overrides(group: str, option: str) -> list[str]:
    if group == "data" and option != "synthetic":  # the synthetic-only keys do not apply
        return [o for o in BASE if not o.startswith("data")] + [f"data={option}"]
    return [*BASE, f"{group}={option}"]


@pytest.fixture(scope="module")
def composed_options() -> list[tuple[str, str, str, dict]]:
    """(group, option, section, composed config) for every option of every group."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    out = []
    with initialize_config_module(config_module="sensreg.configs", version_base="1.3"):
        for group, section in GROUPS.items():
            for option in options(group):
                cfg = compose("train", overrides=base_overrides(group, option))
                out.append((group, option, section, OmegaConf.to_container(cfg, resolve=True)))
    for _, _, section, raw in out:  # untimed: the first check of an option may import its library
        for key in raw[section]:
            try:
                TrainConfig.from_dict(with_value(raw, section, key, "abc"))
            except ConfigError:
                pass
    return out


@contextmanager
def time_limit(seconds: float):
    def hang(*_):
        raise TimeoutError(f"the config check took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(raw: dict, key: str) -> str | None:
    """None if ``raw`` is accepted, else the refusal's message, which must name ``key``."""
    try:
        with time_limit(SECONDS_PER_CHECK):
            TrainConfig.from_dict(raw)
    except ConfigError as err:
        assert key in str(err), (key, str(err))
        return str(err)
    return None


def with_value(raw: dict, section: str, key: str, value) -> dict:
    out = copy.deepcopy(raw)
    out[section][key] = value
    return out


def test_every_key_of_every_option_takes_every_hostile_value(composed_options):
    cases = refused = 0
    for group, option, section, raw in composed_options:
        for key in raw[section]:
            for value in HOSTILE:
                cases += 1
                refused += check(with_value(raw, section, key, value), f"{section}.{key}") is not None
    assert len(composed_options) == sum(len(options(g)) for g in GROUPS)
    assert refused > cases // 2  # most hostile values are refusals, so the checks ran


def test_a_nan_or_a_wrong_type_is_refused_for_every_number_of_a_config(composed_options):
    # The property above holds trivially for a check that accepts everything: these must be refused.
    _, _, _, raw = composed_options[0]  # data=cifar10: the synthetic-only keys are not in it
    for section, values in raw.items():
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                for bad in (float("nan"), "abc", []):
                    assert check(with_value(raw, section, key, bad), f"{section}.{key}") is not None, (key, bad)


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4), max_leaves=6)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_values_for_random_keys_are_accepted_or_refused_by_name(composed_options, data):
    group, option, section, raw = data.draw(st.sampled_from(composed_options))
    key = data.draw(st.sampled_from(sorted(raw[section])))
    check(with_value(raw, section, key, data.draw(anything)), f"{section}.{key}")


CLI_VALUES = ["nan", "inf", "-inf", "-1", "0", "1e30", "-18446744073709551616", "abc", "''", "[]", "[abc]", "true",
              "null"]


def cli_cases() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(key, value) overrides of every key of the main config for every value of CLI_VALUES:
    those the config check accepts, and one of those it refuses per key (a refusal takes one
    code path whatever the key, and the check itself is covered above case by case)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from conftest import composed

    raw, parser = composed(*BASE), OverridesParser.create()
    accepted, refused = [], {}
    for section, values in raw.items():
        for key in values:
            if f"{section}.{key}" in ("trainer.device", "trainer.progress"):
                continue  # a run on the CPU without a progress bar is the point of BASE
            for text in CLI_VALUES:
                value = parser.parse_override(f"{section}.{key}={text}").value()  # as Hydra reads it
                if check(with_value(raw, section, key, value), f"{section}.{key}") is None:
                    accepted.append((f"{section}.{key}", text))
                else:
                    refused.setdefault(f"{section}.{key}", text)
    return accepted, list(refused.items())


@pytest.mark.slow
def test_hostile_values_through_the_cli_are_refused_with_exit_2_or_run(tmp_path, monkeypatch, capsys, in_process_cli):
    """Through `sensreg train` itself: a refusal is exit 2 naming the key, with nothing trained
    and no run folder; a value the check accepts trains to the end, fails the run by its
    divergence check (a learning rate of 1e30 is legal), or is refused by what the CLI checks
    next (a trainer.resume folder that does not exist), without a traceback."""
    monkeypatch.chdir(tmp_path)
    accepted, refused = cli_cases()
    # Every key refuses some value, but prune.target, which prune=search does not read.
    assert {k for k, _ in accepted} - {k for k, _ in refused} == {"prune.target"}
    for i, (key, value) in enumerate(accepted + refused):
        run_dir = tmp_path / f"run{i}"
        code = run_in_process("train", *BASE, f"{key}={value}", f"hydra.run.dir={run_dir}")
        err = capsys.readouterr().err
        assert "Traceback" not in err, (key, value, err)
        if (key, value) in refused:
            assert code == 2, (key, value, code, err)
        if code == 2:  # or refused by the CLI itself (trainer.resume=abc: no such folder)
            assert key in err and "Nothing was trained" in err, (key, value, err)
            assert not run_dir.exists(), (key, value)
            continue
        summary = json.loads((run_dir / "summary.json").read_text())
        if code == 0:
            assert summary["status"] == "completed", (key, value)
        else:
            assert code == 1 and summary["status"] == "failed", (key, value, err)
            assert "non-finite" in summary["error"], (key, value, err)  # it diverged
