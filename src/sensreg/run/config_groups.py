"""The config groups and their options, as Hydra composes them: the schema of each group, the
keys each option reads (the options of data, optim and prune own theirs: their registries say),
and the node each option starts from (``schema.GROUP.OPTION``, which
``sensreg.configs`` registers in Hydra's ConfigStore)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, asdict, fields
from typing import Any

from sensreg.data import DATASETS
from sensreg.method.prune_schedules import PRUNE_SCHEDULES, PruneConfig
from sensreg.run.config import (DataConfig, ModelConfig, OptimConfig, ScheduleConfig, SensConfig,
                                TrainerConfig)
from sensreg.run.optimizers import OPTIMIZERS


# The schema of each config group's options (eta_schedule and lam_schedule are both chosen from
# the group schedule), and the defaults that are another key's value in a composed config.
GROUP_SCHEMAS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "sens": SensConfig,
                                  "optim": OptimConfig, "schedule": ScheduleConfig,
                                  "prune": PruneConfig, "trainer": TrainerConfig}
LINKED_DEFAULTS: dict[str, dict[str, str]] = {"prune": {"params": "${sens.params}"}}
SECTION_GROUPS = {"eta_schedule": "schedule", "lam_schedule": "schedule"}  # a section and the group it is chosen from


# The groups whose options own what they read: a registry whose entries answer reads(key).
# (The other groups' options read what the schema's ``only`` fields say.)
OWNERS: dict[str, dict[str, Any]] = {"data": DATASETS, "optim": OPTIMIZERS, "prune": PRUNE_SCHEDULES}


def key_readers(section: str, key: str) -> tuple[str, ...] | None:
    """The options of ``section``'s group that read ``section.key``; None where every one does."""
    group = SECTION_GROUPS.get(section, section)
    owners = OWNERS.get(group)
    if owners is not None:
        readers = tuple(name for name, option in owners.items() if option.reads(key))
        return None if len(readers) == len(owners) else readers
    schema = GROUP_SCHEMAS.get(group)
    found = {f.name: f for f in fields(schema)} if schema is not None else {}
    return found[key].metadata.get("options") if key in found else None


def option_reads(group: str, option: str) -> Callable[[str], bool]:
    """Whether ``option`` of ``group`` reads a key of its section. An option its group's
    registry lacks (a user's option file alone) reads what every registered one reads."""
    owners = OWNERS.get(group)
    if owners is None:
        only = {f.name: f.metadata.get("options", (option,)) for f in fields(GROUP_SCHEMAS[group])}
        return lambda key: option in only[key]
    if option in owners:
        return owners[option].reads
    return lambda key: all(entry.reads(key) for entry in owners.values())


def option_node(group: str, option: str) -> dict[str, Any]:
    """The config an option of a group starts from: the schema's default of every key the option
    reads (a prune schedule's own ``settings()``), its name, and the linked defaults. Hydra
    knows it as ``schema.GROUP.OPTION`` (registered by ``sensreg.configs``); the option's YAML
    file adds its presets."""
    if group == "prune" and option in PRUNE_SCHEDULES:
        return asdict(PRUNE_SCHEDULES[option].settings()) | LINKED_DEFAULTS["prune"]
    reads = option_reads(group, option)
    node = {f.name: _plain(f.default_factory() if f.default_factory is not MISSING else f.default)
            for f in fields(GROUP_SCHEMAS[group]) if reads(f.name)}
    if "name" in node:
        node["name"] = option
    return node | LINKED_DEFAULTS.get(group, {})


def _plain(value: Any) -> Any:
    # OmegaConf holds lists, not tuples (OptimConfig.betas)
    return list(value) if isinstance(value, tuple) else value

