"""`sensreg train`: the Hydra application and one training job in its run folder (the checks of
the command line: ``overrides.py``; how a job that cannot go on ends: ``train_failures.py``)."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sensreg.commands import sweep_jobs, train_failures as failures
from sensreg.commands.console import fail, remove_if_empty, user_errors
from sensreg.commands.overrides import check_command_line, check_keys_are_read

CONFIG_PACKAGE = "pkg://sensreg.configs"


def run_train(overrides: list[str]) -> None:
    import hydra

    overrides = check_command_line(overrides)
    _register_sweeper()
    jobs: list[sweep_jobs.SweepJob] = []  # the jobs of a sweep run in this process, in order

    def task(cfg) -> dict | None:  # Hydra's task function
        return train_task(cfg, jobs)

    # Hydra reads its arguments from sys.argv; the program name shows up in its --help.
    with _argv(["sensreg train", *overrides]):
        hydra.main(config_path=CONFIG_PACKAGE, config_name="train", version_base="1.3")(task)()
    sweep_jobs.count_failed(jobs)


def _register_sweeper() -> None:
    # Hydra finds plugins by walking the hydra_plugins package, which an editable install
    # (pip install -e) hides from it: sensreg's sweeper is registered by hand.
    from hydra.core.plugins import Plugins
    from hydra_plugins.sensreg_pareto import ParetoSweeper

    Plugins.instance().register(ParetoSweeper)


@contextmanager
def _argv(argv: list[str]):
    """Within: ``sys.argv`` is ``argv``."""
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def train_task(cfg, jobs: list[sweep_jobs.SweepJob] | None = None) -> dict | None:
    """The Hydra task: composed config in, plain values and the run folder passed down; the
    run's summary (with its run_dir) out, None for a job of a sweep that failed. ``jobs``: where
    a job of a sweep run in this process is recorded, for the count at the sweep's end."""
    from hydra.core.hydra_config import HydraConfig

    from hydra.types import RunMode

    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return _train_task(cfg, hydra_dir)
    # A trial of the Pareto search that the config check refuses fails that trial only: the
    # message is printed, the study is told (it keeps its own count), and the search goes on.
    pareto = str(HydraConfig.get().sweeper.get("_target_", "")).endswith("ParetoSweeper")
    return sweep_jobs.run_job(lambda: _train_task(cfg, hydra_dir), hydra_dir,
                              list(HydraConfig.get().overrides.task), None if pareto else jobs)


def _train_task(cfg, hydra_dir: Path) -> dict | None:
    from omegaconf import OmegaConf

    from sensreg.run import distributed

    from sensreg.run import trackers
    from sensreg.run.config import TrainConfig
    from sensreg.run.devices import resolve_device

    with user_errors(unused_folder=hydra_dir, advice=FIX_VALUES):
        check_keys_are_read(cfg)
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
    from sensreg.records import folder as run_folder
    from sensreg.run.interrupt import Interrupted

    run_dir, resume_from = _choose_folder(hydra_dir, config, dist)
    folder = run_folder.RunFolder(run_dir)
    try:
        with user_errors(run=folder, main_process=dist.is_main):
            with folder.lock() if dist.is_main else nullcontext():
                return _train_there(cfg, config, dist, folder, resume_from, tracked)
        return None  # this job of a sweep failed (its summary says so); the sweep goes on
    except Interrupted as err:
        failures.interrupted(err, folder, config, dist.is_main)
    except KeyboardInterrupt as err:  # a second Ctrl-C, or a stop before the run's own handler was in place
        failures.stopped_at_once(err, folder, dist.is_main)
    except (MemoryError, RuntimeError) as err:
        if not failures.out_of_memory(err):
            raise
        failures.no_memory(err, folder, config)
    except OSError as err:
        failures.write_failed(err, folder)


def _choose_folder(hydra_dir: Path, config, dist) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from (None: a fresh start), as process 0
    chooses them; a folder that cannot be used ends the command."""
    from sensreg.errors import UserError
    from sensreg.records import folder as run_folder

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
    return run_dir, resume_from


def _train_there(cfg, config, dist, folder, resume_from: Path | None, tracked) -> dict:
    """The run in its (locked) folder: its records first, then the training."""
    from omegaconf import OmegaConf

    from sensreg.records import folder as run_folder
    from sensreg.run.lifecycle import resume_state, train
    from sensreg.records.logs import setup_logging

    saved = resume_state(config, resume_from)  # checked before anything is written
    # trainer.resume=true without a last.pt starts over (a requeued job that never
    # checkpointed must still run), but the earlier run's records are kept.
    aside = folder.set_aside() if dist.is_main and resume_from is None and config.trainer.resume is True else None
    if dist.is_main:
        folder.write_hydra_records(_hydra_records(cfg))
        folder.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    setup_logging(folder.log_path if dist.is_main else None)
    if aside is not None:
        logging.getLogger("sensreg").warning(
            "warning: trainer.resume=true found no %s in %s to continue from, so the run starts "
            "over; the earlier run's records (summary.json, metrics.csv, config.yaml, train.log) "
            "were moved to %s.", run_folder.CHECKPOINT_NAME, folder.path, aside)
    # The run folder travels with the summary: a sweeper reads its trials from it.
    return {**train(config, folder.path, saved, dist, tracked), "run_dir": str(folder.path)}


def _hydra_records(cfg) -> dict[str, str]:
    """What Hydra itself writes into .hydra/ (the composed config, its own config with the group
    choices, the command's overrides), for a run it was told not to write them for."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    return {"config.yaml": OmegaConf.to_yaml(cfg),
            "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hydra_cfg.overrides.task)))}
