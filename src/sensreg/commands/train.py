"""`sensreg train`: the Hydra application, the checks made before Hydra starts (group spellings,
output folders, override keys, the launcher), and one training job in its run folder."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path


from sensreg.commands.console import fail, remove_if_empty, stop_code, stopped_by, user_errors
from sensreg.errors import first_line

CONFIG_PACKAGE = "pkg://sensreg.configs"


SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")


def run_train(overrides: list[str]) -> None:
    import hydra

    overrides = _group_spelling(overrides)
    for o, key, value in _key_values(overrides):
        if key == "hydra.job.chdir" and value.strip().lower() == "true":
            fail(f"{o}: sensreg writes its run folder by path and reads the data from where it was started, "
                 f"so it does not change into the run folder; drop hydra.job.chdir=true (the run folder is "
                 f"hydra.run.dir either way).")
    _check_launcher_plugin(overrides)
    _check_output_folders(overrides)
    _check_override_keys(overrides)
    # Hydra finds plugins by walking the hydra_plugins package, which an editable install
    # (pip install -e) hides from it: sensreg's sweeper is registered by hand.
    from hydra.core.plugins import Plugins
    from hydra_plugins.sensreg_pareto import ParetoSweeper

    Plugins.instance().register(ParetoSweeper)
    # Hydra reads its arguments from sys.argv; the program name shows up in its --help.
    sys.argv = ["sensreg train", *overrides]
    SWEEP_JOBS.clear()
    hydra.main(config_path=CONFIG_PACKAGE, config_name="train", version_base="1.3")(train_task)()
    _count_failed_jobs(SWEEP_JOBS)


@dataclass
class SweepJob:
    """One job of a sweep run in this process: its run folder, its overrides, and how it ended."""

    folder: Path
    overrides: list[str]
    failed: bool = False
    refused: bool = False  # refused before any training (exit code 2 on its own)


# The jobs of the sweep under way in this process (Hydra's basic sweeper and launcher), in order.
SWEEP_JOBS: list[SweepJob] = []


def _count_failed_jobs(jobs: list[SweepJob]) -> None:
    """A sweep whose jobs failed ends with one line counting and naming them, and exit code 1 (2
    where every job was refused before training: nothing was trained at all). Each failed job's
    own message was printed as it failed, and the sweep went on with the next."""
    failed = [j for j in jobs if j.failed]
    if not failed:
        return
    common = set.intersection(*(set(j.overrides) for j in jobs))

    def named(job: SweepJob) -> str:
        values = " ".join(o for o in job.overrides if o not in common) or "its overrides"
        where = f"run folder {job.folder}" if job.folder.exists() else "refused, no run folder"
        return f"{values} ({where})"

    fail(f"{len(failed)} of {len(jobs)} jobs of the sweep failed: {'; '.join(map(named, failed))}. "
         f"Each one's message is above; a failed run's summary.json says why too.",
         code=2 if all(j.refused for j in jobs) else 1)


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
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


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
            from sensreg.run.folder import occupied  # (torch loads with it: only for a folder that exists)

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

    from sensreg.run.config import TrainConfig, key_readers

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
    from sensreg.run.config import key_readers

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


def _check_keys_are_read(cfg) -> None:
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


def train_task(cfg) -> dict | None:
    """The Hydra task: composed config in, plain values and the run folder passed down; the
    run's summary (with its run_dir) out, None for a job of a sweep that failed."""
    from hydra.core.hydra_config import HydraConfig

    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    if str(HydraConfig.get().sweeper.get("_target_", "")).endswith("ParetoSweeper"):
        # A value the search drew that the config check refuses (exit code 2) fails this trial
        # only: the message is printed, the study is told, and the search goes on. A stop
        # (Ctrl-C, a scheduler's signal) still stops the sweep.
        try:
            return _train_task(cfg, hydra_dir)
        except SystemExit as exit_:
            if exit_.code != 2:
                raise
            return None
    from hydra.types import RunMode

    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return _train_task(cfg, hydra_dir)
    # A job of a sweep that fails, or whose values are refused (its message printed, exit code 2
    # on its own), does not stop the others; the sweep counts them at its end. A stop (Ctrl-C, a
    # scheduler's signal) or a failed write still stops the sweep.
    job = SweepJob(hydra_dir, list(HydraConfig.get().overrides.task))
    SWEEP_JOBS.append(job)
    try:
        result = _train_task(cfg, hydra_dir)
    except SystemExit as exit_:
        if exit_.code != 2:
            raise
        result, job.refused = None, True
    job.failed = result is None
    return result


def _train_task(cfg, hydra_dir: Path) -> dict | None:
    from omegaconf import OmegaConf

    from sensreg.run import distributed

    from sensreg.run import trackers
    from sensreg.run.config import TrainConfig, resolve_device

    with user_errors(unused_folder=hydra_dir, advice=FIX_VALUES):
        _check_keys_are_read(cfg)
        dist = distributed.from_environment()
        raw = OmegaConf.to_container(cfg, resolve=True)
        config = TrainConfig.from_dict(raw)
        names = trackers.check_logger_config(raw.get("logger"))
        cfg.optim.lr = config.optim.lr  # null stood for the network's default: config.yaml shows it
        # Every process checks the config first and meets the same problems, so none of them
        # waits in the process group for one that has already given up.
        dist = distributed.init(dist, resolve_device(config.trainer.device))
    # Process 0 tracks for all.
    tracked = trackers.Trackers(names, raw.get("logger"), trackers.group_of_job()) if dist.is_main \
        else trackers.NO_TRACKERS
    try:
        return _train_in_folder(cfg, config, dist, hydra_dir, tracked)
    finally:
        distributed.shutdown(dist)


FIX_VALUES = " Fix the value(s) above on the command line or in the config."


def _train_in_folder(cfg, config, dist, hydra_dir: Path, tracked) -> dict | None:
    """Choose the run folder (process 0 chooses for all), train, and turn failures into messages."""
    from omegaconf import OmegaConf

    from sensreg.run import folder as run_folder
    from sensreg.errors import UserError
    from sensreg.run.interrupt import Interrupted
    from sensreg.run.lifecycle import resume_state, train

    chosen: tuple[Path, Path | None] | str
    try:
        chosen = run_folder.resolve(hydra_dir, config.trainer.resume)
    except UserError as err:
        chosen = str(err)
    # Each process's Hydra named its own folder (from its own clock); process 0's is the run's.
    chosen = dist.broadcast_object(chosen)
    if isinstance(chosen, str):
        remove_if_empty(hydra_dir)
        fail(f"{chosen}\nNothing was trained.{FIX_VALUES}")
    run_dir, resume_from = chosen
    if run_dir != hydra_dir:
        remove_if_empty(hydra_dir)  # resuming elsewhere, or not process 0: Hydra's folder stays unused
    folder = run_folder.RunFolder(run_dir)
    try:
        with user_errors(run=folder, main_process=dist.is_main):
            with folder.lock() if dist.is_main else nullcontext():
                saved = resume_state(config, resume_from)  # checked before anything is written
                # trainer.resume=true without a last.pt starts over (a requeued job that never
                # checkpointed must still run), but the earlier run's records are kept.
                aside = folder.set_aside() if dist.is_main and resume_from is None and \
                    config.trainer.resume is True else None
                if dist.is_main:
                    folder.write_hydra_records(_hydra_records(cfg))
                    folder.write_config(OmegaConf.to_yaml(cfg, resolve=True))
                _setup_logging(folder.log_path if dist.is_main else None)
                if aside is not None:
                    logging.getLogger("sensreg").warning(
                        "warning: trainer.resume=true found no %s in %s to continue from, so the run starts "
                        "over; the earlier run's records (summary.json, metrics.csv, config.yaml, train.log) "
                        "were moved to %s.", run_folder.CHECKPOINT_NAME, run_dir, aside)
                # The run folder travels with the summary: a sweeper reads its trials from it.
                return {**train(config, run_dir, saved, dist, tracked), "run_dir": str(run_dir)}
        return None  # this job of a sweep failed (its summary says so); the sweep goes on
    except Interrupted as err:
        if folder.has_checkpoint():
            fail(f"{err}: the run folder {run_dir} holds a checkpoint and says status: interrupted. "
                 f"Continue it with `sensreg train <the same overrides> trainer.resume={run_dir}`.",
                 code=err.exit_code)
        if dist.is_main and folder.remove_unstarted():
            remove_if_empty(run_dir)
            fail(f"{err} before the first epoch ended: nothing was kept (no checkpoint, metrics or "
                 f"model), and the run folder is removed. Run the command again.", code=err.exit_code)
        fail(f"{err} before the run wrote its first checkpoint (trainer.checkpoint_every="
             f"{config.trainer.checkpoint_every}), so there is nothing to continue from. The same command with "
             f"trainer.resume=true starts the run over in {run_dir}, keeping these records in a subfolder.",
             code=err.exit_code)
    except KeyboardInterrupt as err:  # a second Ctrl-C, or a stop before the run's own handler was in place
        by, code = stopped_by(err), stop_code(err)
        if folder.has_checkpoint():
            fail(f"interrupted at once ({by}); the run folder {run_dir} keeps its last checkpoint: continue "
                 f"with `sensreg train <the same overrides> trainer.resume={run_dir}`.", code=code)
        if dist.is_main and folder.remove_unstarted():
            remove_if_empty(run_dir)
            fail(f"interrupted during the set-up ({by}), before training began: nothing was trained, and the "
                 f"run folder's first files are removed. Run the command again.", code=code)
        fail(f"interrupted at once ({by}), before the run wrote its first checkpoint: nothing to continue "
             f"from (the run folder {run_dir} keeps what it wrote). Run the command again.", code=code)
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        then = (f"continue with `sensreg train <the same overrides> trainer.resume={run_dir}` and a smaller batch"
                if folder.has_checkpoint() else "run it again with a smaller batch")
        fail(f"out of memory ({first_line(err, 200, type(err).__name__)}) training {config.model.name} with trainer.batch_size="
             f"{config.trainer.batch_size} (and data.eval_batch_size={config.data.eval_batch_size} for evaluation) "
             f"on {config.trainer.device}. Lower trainer.batch_size or data.eval_batch_size, or use a smaller "
             f"model or trainer.precision=bf16; {then}.", code=1)
    except OSError as err:
        gone = folder.gone_error()
        if gone is not None:  # removed under the run in the middle of a write
            fail(f"{gone} (run folder: {run_dir})", code=gone.exit_code)
        if folder.has_checkpoint():
            then = f"continue with `sensreg train <the same overrides> trainer.resume={run_dir}`"
        else:
            remove_if_empty(run_dir)
            then = "run the command again" if not run_dir.exists() else (
                f"start it over in the same folder (it has no checkpoint to continue from) with `sensreg "
                f"train <the same overrides> hydra.run.dir={run_dir} trainer.resume=true`")
        fail(f"could not read or write a file ({err}). Every file of the run folder {run_dir} is "
             f"replaced only by a complete new version, so what was there before is intact; free "
             f"space or fix the permissions, then {then}.", code=1)


def _hydra_records(cfg) -> dict[str, str]:
    """What Hydra itself writes into .hydra/ (the composed config, its own config with the group
    choices, the command's overrides), for a run it was told not to write them for."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    return {"config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task)))}


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: torch's OutOfMemoryError (a GPU's), the CPU
    allocator's RuntimeError, or Python's MemoryError."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return "can't allocate memory" in text or "out of memory" in text.lower()



def _setup_logging(log_file: Path | None) -> None:
    """One line per event on stdout and in the run's train.log (reset for each job of a sweep).
    ``None``: a further process of a distributed run, for which process 0 reports; only errors
    show."""
    logger = logging.getLogger("sensreg")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if log_file is None:
        logger.setLevel(logging.ERROR)
        return
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # Hydra configures logging again for each job of a sweep (dictConfig with
    # disable_existing_loggers), which would silence this logger from the second job on.
    logger.disabled = False
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stdout), _RunLogHandler(log_file)):
        handler.setFormatter(fmt)
        logger.addHandler(handler)


class _RunLogHandler(logging.FileHandler):
    """train.log. A line that cannot be written (a full disk) ends the run like any other failed
    write of the run folder, with the one message naming the file, where logging's default
    would print a traceback and carry on without its log."""

    def __init__(self, path: Path):
        super().__init__(path, encoding="utf-8")

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            from sensreg.atomic import named_os_error

            raise named_os_error(err, Path(self.baseFilename)) from None
        super().handleError(record)


