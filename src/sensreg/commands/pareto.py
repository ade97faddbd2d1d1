"""`hydra/sweeper=pareto`: a multi-objective Optuna search for the front of validation error
against remaining parameters.

Both objectives are minimized and come from each trial's run folder (summary.json's val_error
and remaining_pct): validation figures only, so a sweep never selects on the test split. The
study lives in SQLite beside the trials (SWEEP_DIR/study.db), so the same command run again
continues it:

- trial numbers go on, and finished trials, completed or failed, are not run again;
- a trial that an earlier invocation left running (it was stopped) is told failed and asked
  again with the same parameters, continuing its run folder from last.pt where it has one;
- `n_trials` is the study's total, not the number to add.

One command at a time runs trials of a study: it holds SWEEP_DIR/study.db.lock (taken over when
its process is gone, as a run folder's lock is), and a second is refused. A study.db that is
damaged, or locked by another program, is one message naming the file and the fix. A new study
in a sweep folder that holds an earlier study's run folders numbers its own after them.

A trial whose run fails (it diverged, or the sampler drew a value the config check refuses) is
reported to the study as failed and the sweep goes on. After every batch SWEEP_DIR/study.json
lists the trials and the front, which `sensreg compare SWEEP_DIR` marks.

This is a Hydra sweeper of its own rather than hydra-optuna-sweeper: that plugin (1.3.0) needs
optuna < 3, and reruns none of the above on a restart (it adds `n_trials` more each time, and
its seeded sampler proposes the points of the first invocation again).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper

from sensreg.atomic import check_sqlite_writable, write_json
from sensreg.records.config_keys import NOT_COMPUTATION
from sensreg.run.config_groups import OWNERS, key_readers
from sensreg.records.folder import CHECKPOINT_NAME, STUDY_DB, STUDY_JSON, StudyLock, relative_below

OBJECTIVES = ("val_error", "remaining_pct")  # summary.json keys, both minimized
SAMPLERS = ("nsgaii", "tpe")

# The search space when hydra.sweeper.params is not given: each chosen option's own, lambda
# where the sensitivity variant regularizes (``Variant.search``) and the key that sets how far
# the prune schedule prunes (``PruneSchedule.SEARCH``). Each searched key must be one its
# section's option reads: a key it ignores would spend the trials on noise.


def default_space(sens_name: str, prune_name: str) -> dict[str, str]:
    """The default search space of a config with sensitivity variant ``sens_name`` and prune
    schedule ``prune_name``, as key: sweep."""
    from sensreg.method.prune_schedules import PRUNE_SCHEDULES
    from sensreg.method.sensitivity import VARIANTS

    variant, schedule = VARIANTS.get(sens_name), PRUNE_SCHEDULES.get(prune_name)
    return {**(variant.search if variant is not None else {}),
            **(schedule.SEARCH if schedule is not None else {})}


def say(message: str) -> None:
    """A line of the sweep's own progress (the jobs log theirs to their run folders)."""
    print(f"pareto sweep: {message}", flush=True)


class SweepError(ValueError):
    """A sweep set up wrongly (its message says what to change)."""


def search_space(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Optuna distributions of the sweep overrides (``interval(a,b)``, ``tag(log, interval(a,b))``,
    ``choice(...)``, ``range(...)``), and the overrides that fix one value."""
    import optuna

    space, fixed = {}, []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(f"{key}={override.get_value_element_as_str()}")
            continue
        value = override.value()
        if isinstance(value, IntervalSweep):
            log_scale = "log" in value.tags
            # Hydra reads an interval's ends as floats: a key the config holds as an integer
            # (prune.patience) gets integers, as does tag(int, interval(a,b)).
            if "int" in value.tags or _is_int_key(key):
                space[key] = optuna.distributions.IntDistribution(int(value.start), int(value.end), log=log_scale)
            else:
                space[key] = optuna.distributions.FloatDistribution(value.start, value.end, log=log_scale)
        elif isinstance(value, (ChoiceSweep, RangeSweep)):
            choices = list(override.sweep_iterator(transformer=lambda v: v))
            space[key] = optuna.distributions.CategoricalDistribution(choices)
        else:
            raise SweepError(f"{_text(override)}: hydra/sweeper=pareto searches interval(a,b) (with "
                             f"tag(log, ...) for a log scale), choice(...) and range(...), not this.")
    return space, fixed


def _is_int_key(key: str) -> bool:
    """Whether ``section.key`` of the train config holds an integer."""
    from dataclasses import fields
    from typing import get_args

    from sensreg.checks import field_types
    from sensreg.run.config import TrainConfig

    section, _, name = key.partition(".")
    for f in fields(TrainConfig):
        if f.name == section:
            hint, _ = field_types(type(f.default_factory())).get(name, (None, False))
            return hint is int or int in get_args(hint)  # int, int | float
    return False


def _text(override: Override) -> str:
    return override.input_line or override.get_key_element()


def make_sampler(name: str, seed: int | None, population_size: int):
    import optuna

    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=population_size)
    raise SweepError(f"hydra.sweeper.sampler={name} is not one of: {', '.join(SAMPLERS)}.")


def objectives(summary: Any) -> list[float] | None:
    """The two objectives of a finished run's summary, or None if it did not complete."""
    if not isinstance(summary, dict) or summary.get("status") != "completed":
        return None
    try:
        return [float(summary[key]) for key in OBJECTIVES]
    except (KeyError, TypeError, ValueError):
        return None


class ParetoSearch(Sweeper):
    """The search behind hydra/sweeper=pareto (see the module docstring); registered with Hydra as
    hydra_plugins.sensreg_pareto.ParetoSweeper."""

    def __init__(self, sampler: str = "nsgaii", seed: int | None = 0, n_trials: int = 12, n_jobs: int = 1,
                 population_size: int = 6, study_name: str = "pareto", params: dict | None = None,
                 sweep_dir: str | None = None):
        # sweep_dir: read by train.yaml as hydra.sweep.dir, which is where the study goes.
        self.sampler_name, self.seed, self.n_trials, self.n_jobs = sampler, seed, n_trials, n_jobs
        self.population_size, self.study_name = population_size, study_name
        # None: the default space of the config being swept (default_space)
        self.params = None if params is None else {str(k): str(v) for k, v in params.items()}
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from sensreg.errors import UserError

        self.launched = False
        try:
            self._sweep(arguments)
        except (SweepError, UserError) as err:  # UserError: the study's lock is held (StudyLock)
            from sensreg.commands.console import fail

            fail(f"{err} " + ("The trials that ran are in their run folders." if self.launched
                              else "Nothing was trained."))

    def _sweep(self, arguments: list[str]) -> None:
        try:
            import optuna
        except ImportError:  # however hydra/sweeper=pareto was chosen: command line or a config file
            raise SweepError("hydra/sweeper=pareto needs optuna, which is not installed: pip install -e "
                             "'.[sweep]' (or pip install 'optuna>=4,<6').") from None

        from sqlalchemy.exc import SQLAlchemyError  # optuna's storage; installed with it

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # The command line's sweeps replace the configured ones of the same keys.
        given = {o.partition("=")[0]: o for o in arguments}
        params = self.params if self.params is not None else \
            default_space(self.config.sens.name, self.config.prune.name)
        space, fixed = search_space([f"{k}={v}" for k, v in params.items() if k not in given]
                                    + list(given.values()))
        self._check(space)
        sweep_dir = Path(self.config.hydra.sweep.dir).absolute()
        db = sweep_dir / STUDY_DB
        with StudyLock(sweep_dir):  # one command runs trials of a study at a time
            check_study_file(db)
            try:
                self._search(space, fixed, sweep_dir)
            except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
                raise SweepError(study_file_problem(db, err.__cause__ or err)) from None

    def _search(self, space: dict[str, Any], fixed: list[str], sweep_dir: Path) -> None:
        import optuna

        study = optuna.create_study(study_name=self.study_name, storage=f"sqlite:///{sweep_dir / STUDY_DB}",
                                    load_if_exists=True, directions=["minimize"] * len(OBJECTIVES))
        self._check_same_study(study, fixed, space, sweep_dir)
        first = first_folder_number(study, sweep_dir)
        # Seeded by how far the study got: reproducible, and a continued study draws new points.
        seed = None if self.seed is None else self.seed + len(study.trials)
        study.sampler = make_sampler(self.sampler_name, seed, self.population_size)
        self._requeue_stopped(study, sweep_dir, first)
        say(f"study {self.study_name} in {sweep_dir / STUDY_DB}, {trials_done(study)} trial(s) of "
            f"{self.n_trials} done; searching {', '.join(space)}"
            + (f"; its run folders are numbered from {first}, after those of an earlier study" if first else ""))
        while trials_done(study) < self.n_trials:
            # Trials asked one after another have consecutive numbers; each trial's run folder
            # is numbered by its trial (hydra.job.num, plus the study's first folder number),
            # so the folders of a continued study follow on from the first invocation's.
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - trials_done(study)))]
            jobs = []
            for trial in trials:
                resume = trial.user_attrs.get("resume")
                jobs.append([*fixed, *(f"{k}={v}" for k, v in trial.params.items()),
                             *([f"trainer.resume={resume}"] if resume else [])])
            try:
                self.launched = True
                returns = self.launcher.launch(jobs, initial_job_idx=trials[0].number + first)
            except (KeyboardInterrupt, SystemExit):
                say("stopped; the same command continues the study (the trial under way resumes "
                    "from its last checkpoint)")
                raise
            for trial, ret in zip(trials, returns):
                self._tell(study, trial, ret)
            write_study(study, sweep_dir)
        front = write_study(study, sweep_dir)  # also where the loop had nothing left to run
        say(f"{trials_done(study)} trial(s), {len(front)} on the front; the trials: {sweep_dir / STUDY_JSON}, "
            f"the front drawn: sensreg compare {sweep_dir}")

    def _check(self, space: dict[str, Any]) -> None:
        if not space:
            raise SweepError(f"hydra/sweeper=pareto has nothing to search: sens={self.config.sens.name} "
                             f"prune={self.config.prune.name} reads none of the keys it searches by "
                             f"default. Give hydra.sweeper.params or sweeps on the command line, e.g. "
                             f"'sens.lam=tag(log, interval(1e-6, 1e-3))'.")
        prune, sens = self.config.prune.name, self.config.sens.name
        for key in space:
            section, _, name = key.partition(".")
            readers = key_readers(section, name) if section in OWNERS else None
            option = getattr(self.config, section).name if readers else None
            if readers and option not in readers:
                only = " and ".join(f"{section}={r}" for r in readers)
                instead = (f"search the keys prune={prune} reads: {', '.join(default_space('none', prune)) or 'none'} "
                           f"(the default when hydra.sweeper.params is not given)" if section == "prune"
                           else "search other keys")
                raise SweepError(f"{key} is searched, but {section}={option} does not read it (only {only} "
                                 f"{'do' if len(readers) > 1 else 'does'}). Add {section}={readers[0]}, or {instead}.")
        if "sens.lam" in space and sens == "none":
            raise SweepError("sens.lam is searched, but sens=none does not regularize: every trial would "
                             "train the same. Choose a sensitivity variant (sens=spec) or search other keys.")
        if self.sampler_name not in SAMPLERS:
            raise SweepError(f"hydra.sweeper.sampler={self.sampler_name} is not one of: {', '.join(SAMPLERS)}.")
        for key, low in (("n_trials", 1), ("n_jobs", 1), ("population_size", 2)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise SweepError(f"hydra.sweeper.{key}={value!r} must be an integer >= {low}.")
        # The sampler is seeded with seed + the trials done so far, and NumPy takes seeds below 2^32.
        top = 2**32 - 1 - self.n_trials
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)
                                      or not 0 <= self.seed <= top):
            raise SweepError(f"hydra.sweeper.seed={self.seed!r} must be null (not reproducible) or an integer "
                             f"from 0 to {top} (the sampler draws from seed + the trials done, below 2^32).")

    @staticmethod
    def _check_same_study(study, fixed: list[str], space: dict[str, Any], sweep_dir: Path) -> None:
        """A study is continued only by the command that started it (the same fixed overrides
        and searched keys): its trials would not be comparable otherwise."""
        # Where and how visibly the runs execute does not change their results (NOT_COMPUTATION).
        ignored = {".".join(key) for key in NOT_COMPUTATION}
        command = {"fixed": sorted(o for o in fixed if o.partition("=")[0] not in ignored), "searched": sorted(space)}
        before = study.user_attrs.get("command")
        if before is None:
            study.set_user_attr("command", command)
        elif before != command:
            raise SweepError(
                f"the study in {sweep_dir / STUDY_DB} was started by another command (fixed "
                f"{' '.join(before['fixed']) or 'nothing'}; searching {', '.join(before['searched'])}), "
                f"not this one (fixed {' '.join(command['fixed']) or 'nothing'}; searching "
                f"{', '.join(command['searched'])}). Continue it with that command, or start another "
                f"study with hydra.sweeper.study_name=NAME (or hydra.sweep.dir=DIR).")

    @staticmethod
    def _requeue_stopped(study, sweep_dir: Path, first: int) -> None:
        """Trials an earlier invocation left running (it was stopped) are told failed and
        enqueued again with their parameters, to be asked first; their run folders continue
        from last.pt where they have one."""
        import optuna

        for trial in study.trials:
            if trial.state != optuna.trial.TrialState.RUNNING:
                continue
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            folder = trial.user_attrs.get("resume") or _trial_folder(sweep_dir, trial.number + first)
            resume = str(folder) if folder is not None and (Path(folder) / CHECKPOINT_NAME).exists() else None
            study.enqueue_trial(trial.params, user_attrs={"continues": trial.number, "resume": resume})
            say(f"trial {trial.number} was stopped; it is run again" + (f", continuing {folder}" if resume else ""))

    def _tell(self, study, trial, ret) -> None:
        import optuna

        try:
            summary = ret.return_value
        except Exception as err:  # the job raised: the launcher keeps the exception for us
            summary, why = None, f"{type(err).__name__}: {err}"
        else:
            why = "its run did not complete (its messages above, or its job's log, say why)"
        values = objectives(summary)
        if values is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            say(f"trial {trial.number} failed, the sweep goes on: {why}")
            return
        trial.set_user_attr("run_dir", summary.get("run_dir"))
        study.tell(trial, values)


def trials_done(study) -> int:
    """Trials finished, completed or failed, but not those stopped and run again (each such
    trial has one that continues it)."""
    import optuna

    finished = sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL) for t in study.trials)
    return finished - sum("continues" in t.user_attrs for t in study.trials)


def first_folder_number(study, sweep_dir: Path) -> int:
    """The number of the run folder of the study's trial 0. It is 0, unless a new study starts in
    a sweep folder that holds numbered run folders already (an earlier study's, whose study.db
    was deleted or moved aside): its folders then follow on from theirs, which stay as they are,
    where the same numbers would collide with them. Kept in the study, for its continuations."""
    if "first_folder" not in study.user_attrs:
        numbers = [int(m.group(1)) for p in sweep_dir.iterdir() if p.is_dir() and (m := re.match(r"(\d+)_", p.name))]
        # A study with trials but no first folder was started before this was recorded: at 0.
        study.set_user_attr("first_folder", max(numbers) + 1 if numbers and not study.trials else 0)
    return study.user_attrs["first_folder"]


# How long a study.db locked by another program is waited for before that is reported (SQLite's
# busy timeout, as SQLAlchemy's default).
LOCKED_WAIT_S = 5.0


def check_study_file(db: Path) -> None:
    """Raises SweepError naming ``db`` and the fix where the study file is no SQLite database
    (damaged) or another program holds a write transaction on it, before any trial runs."""
    import sqlite3

    if not db.exists():
        return
    try:
        check_sqlite_writable(db, LOCKED_WAIT_S)
    except sqlite3.Error as err:
        raise SweepError(study_file_problem(db, err)) from None


def study_file_problem(db: Path, err: BaseException) -> str:
    """The message for a study file that cannot be used: what happened, and the fix."""
    if "locked" in str(err):
        return (f"the study {db} is locked by another program, which has held a write transaction on "
                f"it for more than {LOCKED_WAIT_S:g} s ({err}). Close that program (an sqlite3 shell, a "
                f"dashboard writing to the file), then run the command again: it continues the study.")
    return (f"the study {db} cannot be read ({err}): the file is damaged, or not a study. Move it "
            f"aside (or delete it) and run the command again: a new study starts, and its run folders "
            f"are numbered after those already in {db.parent}, which stay as they are.")


def _trial_folder(sweep_dir: Path, number: int) -> Path | None:
    """The run folder numbered ``number`` (named ``NUMBER_...`` by hydra.sweep.subdir)."""
    found = sorted(p for p in sweep_dir.glob(f"{number}_*") if p.is_dir())
    return found[0] if found else None


def write_study(study, sweep_dir: Path) -> set[int]:
    """SWEEP_DIR/study.json: every trial (number, state, parameters, objectives, run folder:
    relative to SWEEP_DIR where it is below it, so the file stays right when the folder moves)
    and the numbers of those on the front, which it returns."""
    front = {t.number for t in study.best_trials} if any(t.values for t in study.trials) else set()
    trials = [{"number": t.number, "state": t.state.name, "params": t.params,
               "values": dict(zip(OBJECTIVES, t.values)) if t.values else None,
               "run_dir": relative_below(t.user_attrs["run_dir"], sweep_dir) if t.user_attrs.get("run_dir") else None,
               "on_front": t.number in front}
              for t in study.trials]
    write_json(sweep_dir / STUDY_JSON, {"study": study.study_name, "objectives": list(OBJECTIVES),
                                        "directions": ["minimize"] * len(OBJECTIVES),
                                        "trials": trials, "front": sorted(front)})
    return front
