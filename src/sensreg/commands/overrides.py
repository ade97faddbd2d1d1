"""The checks of `sensreg train`'s command line made before Hydra starts (group spellings,
hydra.job.chdir, the launcher plugin, output folders, override keys), and the one made on the
composed config that needs Hydra's own record of the command (every key set is read)."""

from __future__ import annotations

import os
from pathlib import Path

from sensreg.commands.console import fail

SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")


def check_command_line(overrides: list[str]) -> list[str]:
    """The overrides as Hydra takes them (a section chosen by its own name spelt as its group's
    choice), each checked; a mistake ends in fail(), before Hydra makes any folder."""
    overrides = _group_spelling(overrides)
    for o, key, value in _key_values(overrides):
        if key == "hydra.job.chdir" and value.strip().lower() == "true":
            fail(f"{o}: sensreg writes its run folder by path and reads the data from where it was started, "
                 f"so it does not change into the run folder; drop hydra.job.chdir=true (the run folder is "
                 f"hydra.run.dir either way).")
    _check_launcher_plugin(overrides)
    _check_output_folders(overrides)
    _check_override_keys(overrides)
    return overrides


def _key_values(overrides: list[str]):
    """(override, key without Hydra's + / ++ prefix, value) for each key=value override."""
    for o in overrides:
        key, _, value = o.partition("=")
        yield o, key.lstrip("+"), value


# Config sections chosen from a group of another name: `sensreg train --help` lists them under the
# section's name (eta_schedule), while Hydra takes the choice as schedule@eta_schedule=NAME.
PACKAGED_GROUPS = {"eta_schedule": "schedule", "lam_schedule": "schedule"}


def _group_options(group: str) -> list[str]:
    from importlib import resources

    folder = resources.files("sensreg.configs") / group
    options = {p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")}
    # a registered option's file (a prune schedule's, an optimizer's) may lie on a search path of
    # the user's
    from sensreg.run.config_groups import OWNERS

    options |= set(OWNERS.get(group, ()))
    return sorted(options)


def _group_spelling(overrides: list[str]) -> list[str]:
    """A section chosen by its own name, as --help lists it (eta_schedule=step), is taken for the
    group choice (schedule@eta_schedule=step): Hydra would set the whole section to the text and
    fail in a traceback. A value that is no option of the group, or the group named alone
    (schedule=step, which does not say which section), is refused naming the right spelling."""
    out = []
    for o, key, value in _key_values(overrides):
        section = key if "=" in o and not o.startswith(("+", "~")) else None
        if section in PACKAGED_GROUPS:
            group = PACKAGED_GROUPS[section]
            options = _group_options(group) if section == "lam_schedule" else \
                [n for n in _group_options(group) if n != "follow_eta"]
            if not all(v in options for v in value.split(",")):  # a sweep: eta_schedule=step,cosine
                fail(f"{o}: {section} is chosen from the group {group}, whose options for it are "
                     f"{', '.join(options)}; e.g. {section}=step (or {group}@{section}=step). A key of "
                     f"the section is set with a dot: {section}.milestones=[0.5,0.75].")
            o = f"{group}@{section}={value}"
        elif section in set(PACKAGED_GROUPS.values()):
            sections = [s for s, g in PACKAGED_GROUPS.items() if g == section]
            fail(f"{o}: the group {section} is used twice, for {' and '.join(sections)}; say which, e.g. "
                 f"{sections[0]}={value} or {section}@{sections[0]}={value}.")
        out.append(o)
    return out


def _check_output_folders(overrides: list[str]) -> None:
    """A run or sweep folder given on the command line must be creatable: Hydra makes it before
    the task starts and would answer a path under a file, or in a folder without write
    permission, with a traceback. (Paths built from ${...} are Hydra's to resolve; not checked.)"""
    from sensreg.atomic import first_existing, path_too_long

    multirun = any(o in ("-m", "--multirun") for o in overrides)
    resume = next((value.strip().lower() for _, key, value in _key_values(overrides) if key == "trainer.resume"), "")
    for o, key, value in _key_values(overrides):
        if key not in ("hydra.run.dir", "hydra.sweep.dir", "trainer.init") or not value or "${" in value:
            continue
        # Hydra would make the folder (or Python look at the file) and fail in a traceback.
        too_long = path_too_long(value)
        if too_long is not None:
            fail(f"{o}: {too_long}. Choose a shorter path for {key}.")
        if key == "trainer.init":
            continue  # the config check looks at the file
        folder = Path(value).expanduser().absolute()
        if key == "hydra.run.dir" and folder.is_dir() and not multirun and resume in ("", "false"):
            from sensreg.records.folder import occupied  # (torch loads with it: only for a folder that exists)

            problem = occupied(folder)
            if problem is not None:
                fail(f"{problem}\nNothing was trained or written.")
        existing = first_existing(folder)
        if not existing.is_dir():
            fail(f"{o}: {existing} is a file, so no folder can be made there. Choose another path "
                 f"for {key}.")
        if not os.access(existing, os.W_OK | os.X_OK):
            fail(f"{o}: {existing} is not writable here, so the run folder cannot be made. Choose a "
                 f"path you can write to for {key}.")


def _check_override_keys(overrides: list[str]) -> None:
    """A key=value override of a key that no config section has (a typo such as trainer.epoch)
    names the key it most likely meant; Hydra's own answer would suggest adding the typo with
    +trainer.epoch=3. Keys with + or ++, Hydra's own and group choices are left to Hydra."""
    dotted = [(o, key) for o, key, _ in _key_values(overrides)
              if "=" in o and not o.startswith("+") and key.count(".") == 1]
    if not dotted:  # nothing to look up: spare `sensreg train --help` the config's imports
        return
    import difflib
    from dataclasses import fields

    from sensreg.run.config import TrainConfig
    from sensreg.run.config_groups import key_readers

    sections = {f.name: f.default_factory() for f in fields(TrainConfig)}
    chosen = _chosen_options(overrides)
    for o, key in dotted:
        section, _, name = key.partition(".")
        if section not in sections:
            continue
        schema = {f.name: f for f in fields(sections[section])}
        if name not in schema:
            close = difflib.get_close_matches(name, list(schema), n=1)
            hint = f"did you mean {section}.{close[0]}? " if close else ""
            fail(f"{o}: the config has no key {key}; {hint}The keys of {section}: {', '.join(schema)}. "
                 f"(`sensreg train --cfg job` prints the whole config.)")
        # A key only some options read (optim.betas: adam), set beside another option chosen on
        # the command line: Hydra's answer would suggest +optim.betas, which would be ignored.
        readers = key_readers(section, name)
        option = chosen.get(section)
        group_name = PACKAGED_GROUPS.get(section, section)
        if readers and option is not None and option not in readers and option in _group_options(group_name):
            group = section  # (eta_schedule=step is also how a schedule is chosen)
            fail(f"{o}: {key} is read by {' and '.join(f'{group}={r}' for r in readers)} only, and this "
                 f"command chooses {group}={option}. Drop {key}, or choose "
                 f"{'one of those' if len(readers) > 1 else f'{group}={readers[0]}'}.")
    # The same for an option a preset or a group default chooses: the groups composed without the
    # keys (Hydra's own answer to a key the option's node lacks is a traceback-like "not in struct").
    unchosen = [(o, key) for o, key in dotted if key.partition(".")[0] in sections
                and key.partition(".")[0] not in chosen and key_readers(*key.split(".", 1))]
    if unchosen:
        problem = _unread_key_problem(overrides, unchosen)
        if problem:
            fail(f"{problem}\nNothing was trained.")


def _unread_key_problem(overrides: list[str], keys: list[tuple[str, str]]) -> str | None:
    """Of ``keys`` (override, section.key), the first one that the option its section gets from
    the presets and group defaults does not read, as the refusal; None where all are read."""
    from hydra import compose, initialize_config_module

    groups = [o for o, key, value in _key_values(overrides)
              if not o.startswith("-") and "." not in key and not key.startswith("hydra") and "," not in value]
    try:
        with initialize_config_module(config_module="sensreg.configs", version_base="1.3"):
            cfg = compose(config_name="train", overrides=groups)
    except Exception:  # noqa: BLE001 - a bad choice among them is Hydra's to name, as it does
        return None
    preset = next((g for g in groups if g.startswith("experiment=")), None) or \
        ("experiment=default" if not any(g.startswith("~experiment") for g in groups) else None)
    for o, key in keys:
        section = key.partition(".")[0]
        problem = _unread_key_refusal(o, key, cfg[section].get("name") if section in cfg else None, preset)
        if problem:
            return problem
    return None


def _unread_key_refusal(override: str, key: str, option: str | None, preset: str | None) -> str | None:
    """The refusal of ``override`` (of ``key``, section.name) where ``option``, the one its section
    runs with (chosen by ``preset`` and the defaults), does not read it; None where it does, and
    for an option the group lacks (the config check names that)."""
    from sensreg.run.config_groups import key_readers

    section, _, name = key.partition(".")
    readers = key_readers(section, name)
    if option is None or not readers or option in readers or \
            option not in _group_options(PACKAGED_GROUPS.get(section, section)):
        return None
    source = f"{preset} and the defaults" if preset else "the defaults"
    fix = f"choose {section}={readers[0]}" if len(readers) == 1 else \
        f"choose one of {', '.join(f'{section}={r}' for r in readers)}"
    return (f"{override}: {key} is not read by {section}={option}, the option this command runs with (from "
            f"{source}), so the run would ignore it. Drop {key}, or {fix}.")


def check_keys_are_read(cfg) -> None:
    """Every section.key=value of the command line is read by the option its section ends up
    with, whoever chose that option (a preset, a group default): one the run would silently
    ignore (prune.tolerance beside the main job's gmp) is refused, naming the option that reads
    it. (The command line's own choices were checked before Hydra composed the config.)"""
    from hydra.core.hydra_config import HydraConfig

    from sensreg.run.config import ConfigError

    hydra_cfg = HydraConfig.get()
    experiment = hydra_cfg.runtime.choices.get("experiment")
    preset = f"experiment={experiment}" if experiment and experiment != "null" else None
    problems = []
    for o, key, _ in _key_values(list(hydra_cfg.overrides.task)):
        if o.startswith(("+", "~")) or key.count(".") != 1:
            continue
        section = key.partition(".")[0]
        node = cfg.get(section) if section in cfg else None
        problem = _unread_key_refusal(o, key, node.get("name") if hasattr(node, "get") else None, preset)
        if problem:
            problems.append(problem)
    if problems:
        raise ConfigError("\n".join(problems))


def _chosen_options(overrides: list[str]) -> dict[str, str]:
    """The option each config section gets on the command line (data=mnist, schedule@eta_schedule=
    step), where one is chosen there; a sweep over options (optim=sgd,adam) chooses none."""
    chosen = {}
    for o, key, value in _key_values(overrides):
        if "=" not in o or o.startswith("~") or "." in key or "," in value:
            continue
        group, _, section = key.partition("@")
        chosen[section or group] = value
    return chosen


def _check_launcher_plugin(overrides: list[str]) -> None:
    """The submitit launchers come from an optional plugin; without it Hydra would only say that
    the config hydra/launcher/submitit_slurm is not found."""
    for o, key, value in _key_values(overrides):
        if key == "hydra/launcher" and value in SUBMITIT_LAUNCHERS:
            try:
                import hydra_plugins.hydra_submitit_launcher  # noqa: F401
            except ImportError:
                fail(f"{o} needs Hydra's submitit launcher plugin, which is not installed: "
                     f"pip install -e '.[slurm]' (or pip install 'hydra-submitit-launcher>=1.2,<1.3').")
