"""The config groups and their options, as Hydra composes them: the schema of each group, the
keys each option reads, and the node each option starts from (``schema.GROUP.OPTION``, which
``sensreg.configs`` registers in Hydra's ConfigStore)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields
from typing import Any

from sensreg.method.prune_schedules import PRUNE_SCHEDULES, PruneConfig
from sensreg.run.config import (DataConfig, ModelConfig, OptimConfig, ScheduleConfig, SensConfig,
                                TrainerConfig)


# The schema of each config group's options (eta_schedule and lam_schedule are both chosen from
# the group schedule), and the defaults that are another key's value in a composed config.
GROUP_SCHEMAS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "sens": SensConfig,
                                  "optim": OptimConfig, "schedule": ScheduleConfig,
                                  "prune": PruneConfig, "trainer": TrainerConfig}
LINKED_DEFAULTS: dict[str, dict[str, str]] = {"prune": {"params": "${sens.params}"}}
SECTION_GROUPS = {"eta_schedule": "schedule", "lam_schedule": "schedule"}  # a section and the group it is chosen from


def key_readers(section: str, key: str) -> tuple[str, ...] | None:
    """The options of ``section``'s group that read ``section.key``; None where every one does."""
    group = SECTION_GROUPS.get(section, section)
    if group == "prune":
        if key in ("name", "params", "batchnorm"):
            return None
        return tuple(name for name, schedule in PRUNE_SCHEDULES.items() if schedule.reads(key))
    schema = GROUP_SCHEMAS.get(group)
    found = {f.name: f for f in fields(schema)} if schema is not None else {}
    return found[key].metadata.get("options") if key in found else None


def option_node(group: str, option: str) -> dict[str, Any]:
    """The config an option of a group starts from: the schema's default of every key the option
    reads (``only``; a prune schedule's own ``settings()``), its name, and the linked defaults.
    Hydra knows it as ``schema.GROUP.OPTION`` (registered by ``sensreg.configs``); the option's
    YAML file adds its presets."""
    if group == "prune" and option in PRUNE_SCHEDULES:
        return asdict(PRUNE_SCHEDULES[option].settings()) | LINKED_DEFAULTS["prune"]
    schema = GROUP_SCHEMAS[group]
    node = {f.name: _plain(f.default_factory() if f.default_factory is not MISSING else f.default)
            for f in fields(schema) if option in f.metadata.get("options", (option,))}
    if "name" in node:
        node["name"] = option
    return node | LINKED_DEFAULTS.get(group, {})


def _plain(value: Any) -> Any:
    # OmegaConf holds lists, not tuples (OptimConfig.betas)
    return list(value) if isinstance(value, tuple) else value

