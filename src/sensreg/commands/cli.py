"""`sensreg <command> [overrides]`: one entry per command.

- ``train``: a Hydra application (config groups, overrides, ``-m`` sweeps, ``--cfg job``,
  ``--help``) over the configs shipped in the package as ``sensreg.configs``.
- ``eval CHECKPOINT [data.KEY=VALUE ...]``: re-evaluates a saved model on its test set.
- ``compare PATH ...``: a table, compare.csv/.md and plots of every run below PATH (``compare.py``); ``eval`` is ``reevaluate.py``.
- ``report RUN_DIR``: report.md and plots for one run (``run/report.py``).

User mistakes end with a one-paragraph message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

from rich.console import Console

from sensreg.commands.console import err_console, fail

USAGE = """\
usage: sensreg <command> [options] [key=value ...]

commands:
  train [overrides]                 train, regularize by sensitivity, prune, evaluate, report
                                    (Hydra: `sensreg train --help` lists groups and options,
                                    `-m` runs a sweep, `--cfg job` prints the composed config)
  eval CHECKPOINT [data.KEY=VALUE]  recompute test error and sparsity of a saved model.pt (or of
                                    a run folder's)
                                    (--json for machine-readable output; trainer.device=cpu|cuda)
  compare PATH... [options]         table of every run below PATH (folders or globs): error,
                                    remaining %, compression, Pareto front; writes compare.csv,
                                    compare.md and plots (--sort, --where, --group, --out,
                                    --wide for every column)
  report RUN_DIR [--out DIR]        report.md and plots for one run folder

examples:
  sensreg train model=lenet5 sens=unspec
  sensreg train -m sens.lam=1e-5,1e-4 trainer.seed=0,1
  sensreg eval outputs/runs/2026-01-01/12-00-00-000000_lenet300_spec/model.pt
  sensreg compare outputs/ --where sens=spec,loss --group --sort error
  sensreg report outputs/runs/2026-01-01/12-00-00-000000_lenet300_spec
"""

CONFIG_PACKAGE = "pkg://sensreg.configs"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        run_train(rest)
    elif command == "eval":
        run_eval(rest)
    elif command == "compare":
        run_compare(rest)
    elif command == "report":
        run_report(rest)
    else:
        fail(f"unknown command {command!r}; the commands are: train, eval, compare, report. "
             f"See `sensreg --help`.")


# --- train -------------------------------------------------------------------------------------

SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")


def run_train(overrides: list[str]) -> None:
    import hydra

    overrides = _group_spelling(overrides)
    _check_launcher_plugin(overrides)
    _check_output_folders(overrides)
    _check_override_keys(overrides)
    if os.environ.get("RANK", "0") != "0":
        # A further process of a torchrun run: process 0 writes the run folder (Hydra's .hydra/ too).
        overrides = [*overrides, "hydra.output_subdir=null"]
    # Hydra finds plugins by walking the hydra_plugins package, which an editable install
    # (pip install -e) hides from it: sensreg's sweeper is registered by hand.
    from hydra.core.plugins import Plugins
    from hydra_plugins.sensreg_pareto import ParetoSweeper

    Plugins.instance().register(ParetoSweeper)
    # Hydra reads its arguments from sys.argv; the program name shows up in its --help.
    sys.argv = ["sensreg train", *overrides]
    hydra.main(config_path=CONFIG_PACKAGE, config_name="train", version_base="1.3")(train_task)()


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
    from sensreg.atomic import first_existing

    for o, key, value in _key_values(overrides):
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or not value or "${" in value:
            continue
        existing = first_existing(Path(value).expanduser().absolute())
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

    sections = {f.name: f.default_factory() for f in fields(TrainConfig)}
    for o, key in dotted:
        section, _, name = key.partition(".")
        if section not in sections:
            continue
        known = [f.name for f in fields(sections[section])]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {section}.{close[0]}? " if close else ""
            fail(f"{o}: the config has no key {key}; {hint}The keys of {section}: {', '.join(known)}. "
                 f"(`sensreg train --cfg job` prints the whole config.)")


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
    return _train_task(cfg, hydra_dir)


def _train_task(cfg, hydra_dir: Path) -> dict | None:
    from omegaconf import OmegaConf

    from sensreg.run import distributed

    from sensreg.run import trackers
    from sensreg.run.config import TrainConfig, resolve_device

    with user_errors(unused_folder=hydra_dir, advice=FIX_VALUES):
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
        _remove_if_empty(hydra_dir)
        fail(f"{chosen}\nNothing was trained.{FIX_VALUES}")
    run_dir, resume_from = chosen
    if run_dir != hydra_dir:
        _remove_if_empty(hydra_dir)  # resuming elsewhere, or not process 0: Hydra's folder stays unused
    folder = run_folder.RunFolder(run_dir)
    try:
        with user_errors(run=folder, main_process=dist.is_main):
            with folder.lock() if dist.is_main else nullcontext():
                saved = resume_state(config, resume_from)  # checked before anything is written
                if dist.is_main:
                    folder.write_config(OmegaConf.to_yaml(cfg, resolve=True))
                _setup_logging(folder.log_path if dist.is_main else None)
                # The run folder travels with the summary: a sweeper reads its trials from it.
                return {**train(config, run_dir, saved, dist, tracked), "run_dir": str(run_dir)}
        return None  # this job of a sweep failed (its summary says so); the sweep goes on
    except Interrupted as err:
        if folder.has_checkpoint():
            fail(f"{err}: the run folder {run_dir} holds a checkpoint and says status: interrupted. "
                 f"Continue it with `sensreg train <the same overrides> trainer.resume={run_dir}`.",
                 code=err.exit_code)
        fail(f"{err} before training began; nothing to continue, run the command again.", code=err.exit_code)
    except KeyboardInterrupt:
        fail(f"interrupted at once; the run folder {run_dir} says status: interrupted and keeps its "
             f"last checkpoint, if it had one.", code=130)
    except OSError as err:
        if folder.has_checkpoint():
            then = f"continue with `sensreg train <the same overrides> trainer.resume={run_dir}`"
        else:
            _remove_if_empty(run_dir)
            then = "run the command again" if not run_dir.exists() else (
                f"start it over in the same folder (it has no checkpoint to continue from) with `sensreg "
                f"train <the same overrides> hydra.run.dir={run_dir} trainer.resume=true`")
        fail(f"could not read or write a file ({err}). Every file of the run folder {run_dir} is "
             f"replaced only by a complete new version, so what was there before is intact; free "
             f"space or fix the permissions, then {then}.", code=1)


@contextmanager
def user_errors(run=None, main_process: bool = True, unused_folder: Path | None = None, advice: str = ""):
    """The one handler of the errors a user causes (``errors.UserError``): the message on stderr,
    no traceback, and the exit code.

    ``run``: the RunFolder of a training run under way. An error that ends a run (``ends_run``:
    a missing dataset, a checkpoint that does not fit, divergence) is logged, recorded in the
    run's summary (``run.train`` did that) and exits 1 naming the folder; in a sweep the job
    fails and the sweep goes on (the with-block is left without an exception). Any other user
    error means nothing was trained: exit 2. ``unused_folder``: Hydra's run folder, removed if
    nothing was written there. ``advice``: appended to "Nothing was trained." in training.
    """
    from sensreg.errors import UserError

    try:
        yield
    except UserError as err:
        training = run is not None or unused_folder is not None
        if unused_folder is not None:
            _remove_if_empty(unused_folder)
        if not (run is not None and err.ends_run):
            fail(f"{err}\nNothing was trained.{advice}" if training else str(err))
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        logging.getLogger("sensreg").error("run failed: %s", err)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            fail(f"{err} (run folder: {run.path})", code=err.exit_code)
        # One diverging lambda must not cancel the rest of a sweep; its summary says failed.
        if main_process:
            err_console.print(f"[bold red]job failed, the sweep goes on:[/bold red] {err} "
                              f"(run folder: {run.path})")


def _remove_if_empty(run_dir: Path) -> None:
    """A config rejected before any work leaves no run folder behind (only Hydra's .hydra/)."""
    if run_dir.is_dir() and all(p.name == ".hydra" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        # The dated folders above it, if now empty, but only those inside the working folder:
        # one the user made (or stands in) is never removed.
        cwd = Path.cwd().resolve()
        for parent in list(run_dir.resolve().parents)[:3]:
            if not parent.is_relative_to(cwd) or parent == cwd:
                break
            try:
                parent.rmdir()
            except OSError:
                break


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


# --- eval --------------------------------------------------------------------------------------

def run_eval(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        print("usage: sensreg eval CHECKPOINT [data.KEY=VALUE ...] [trainer.device=cpu|cuda|auto] [--json]\n\n"
              "Rebuilds the model saved in CHECKPOINT (a run folder's model.pt), evaluates it on the test\n"
              "split of the dataset it was trained on, and counts its non-zero parameters. data.* overrides\n"
              "change how the data is found (e.g. data.root=/elsewhere). Where the checkpoint sits in a\n"
              "run folder, the figures are compared with that run's summary.json.")
        return
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    paths = [a for a in args if "=" not in a]
    if len(paths) != 1:
        fail("sensreg eval takes exactly one checkpoint path (a run folder's model.pt), then optional "
             "data.KEY=VALUE overrides; e.g. `sensreg eval outputs/runs/.../model.pt data.root=data`.")
    overrides, device = {}, "auto"
    import yaml

    for a in args:
        if "=" not in a:
            continue
        key, value = a.split("=", 1)
        if key.startswith("data."):
            overrides[key[5:]] = yaml.safe_load(value)
        elif key == "trainer.device":
            device = value
        else:
            fail(f"sensreg eval accepts data.KEY=VALUE and trainer.device=... overrides, not {key!r}.")

    from sensreg.run.config import check_device, resolve_device
    from sensreg.commands.reevaluate import evaluate_checkpoint
    from sensreg.run.folder import MODEL_NAME, RunFolder

    problem = check_device(device)
    if problem:
        fail(problem)
    checkpoint = Path(paths[0])
    if checkpoint.is_dir():  # a run folder: its final model
        folder = RunFolder(checkpoint)
        if not folder.model_path.is_file() and not folder.summary_path.is_file():
            fail(f"{checkpoint} is not a run folder: it holds neither a {MODEL_NAME} nor a summary.json. "
                 f"Give sensreg eval a run folder (outputs/runs/<date>/<run>) or a {MODEL_NAME} file.")
        if not folder.model_path.is_file():
            fail(f"the run folder {checkpoint} has no {MODEL_NAME}: the run has not finished (its summary.json "
                 f"says how far it got; continue it with `sensreg train ... trainer.resume={checkpoint}`).")
        checkpoint = folder.model_path
    with user_errors():
        result = evaluate_checkpoint(checkpoint, overrides, resolve_device(device))
    result["matches_summary"] = _compare_with_summary(checkpoint, result)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_eval(result)


def _compare_with_summary(checkpoint: Path, result: dict) -> bool | None:
    """Whether the run folder's summary.json holds exactly these figures; None without one."""
    from sensreg.run.folder import RunFolder

    summary = RunFolder(checkpoint.parent).read().summary
    if summary is None or "test_error" not in summary:
        return None
    return (summary["test_error"] == result["test_error"]
            and summary.get("remaining_pct") == result["sparsity"]["prunable"]["remaining_pct"])


def _print_eval(result: dict) -> None:
    from sensreg.run.tables import layer_table, stdout_console

    console = stdout_console(highlight=False)  # the terminal's width, or 80 columns in a pipe
    s = result["sparsity"]
    from sensreg.run.report import shows_top5

    # (--json keeps the top-5 error whatever the classes: it is a measurement, not a display)
    top5 = f", top-5 error {100 * result['test_top5_error']:.2f}%" if "test_top5_error" in result \
        and shows_top5(result.get("num_classes")) else ""
    console.print(f"{result['model']} on {result['data']} test set: top-1 error "
                  f"{100 * result['test_error']:.2f}%{top5}, loss {result['test_loss']:.4f}")
    console.print(f"remaining {s['prunable']['remaining_pct']:.3f}% of prunable parameters "
                  f"({s['prunable']['compression']:.1f}x), {s['all']['remaining_pct']:.3f}% of all "
                  f"({s['all']['compression']:.1f}x); FLOPs left {s['flops']['remaining_pct']:.2f}%")
    console.print(layer_table(s))
    match = result["matches_summary"]
    if match is not None:
        console.print("summary.json beside the checkpoint: " + ("figures match exactly" if match else
                      "[bold red]figures differ[/bold red] (different data, device or a modified checkpoint)"))


# --- compare and report ------------------------------------------------------------------------

def _arg_parser(prog: str, description: str, epilog: str = ""):
    """An argparse parser whose mistakes end like every other user mistake: fail(), exit 2."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            fail(f"{prog}: {message}. See `{prog} --help`.")

    return Parser(prog=prog, description=description, epilog=epilog,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def run_compare(args: list[str]) -> None:
    from rich.markup import escape
    from rich.measure import Measurement

    from sensreg.commands.compare import DEFAULT_SORT, KEYS, compare, rich_table
    from sensreg.run.tables import stdout_console

    parser = _arg_parser(
        "sensreg compare",
        "Finds every run folder below the PATHs (single runs, sweeps, whole outputs/ trees; globs\n"
        "are expanded), prints one table row per run (running, failed and interrupted runs\n"
        "included), stars the Pareto-optimal runs (no run of the same network and data has both\n"
        "fewer remaining parameters and a lower test error), and writes compare.csv, compare.md\n"
        "and one plot per network and dataset, compare_<model>_<data>.png, into the first PATH\n"
        "(or --out DIR). Folders with an unreadable summary.json are listed and skipped.",
        f"keys for --where and --sort: {', '.join(KEYS)}\n\n"
        "examples:\n  sensreg compare outputs/\n"
        "  sensreg compare outputs/multirun/2026-01-01/* --where sens=spec,loss --where 'lam<1e-3'\n"
        "  sensreg compare outputs/ --group --sort error --wide\n"
        "  sensreg compare outputs/ --sort=-remaining --out /tmp/cmp")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders (or globs) holding run folders")
    parser.add_argument("--sort", metavar="KEYS", default=None,
                        help=f"comma-separated keys; -KEY for descending, written --sort=-KEY "
                             f"(default: {DEFAULT_SORT})")
    parser.add_argument("--where", action="append", default=[], metavar="EXPR",
                        help="keep rows where KEY=VALUE (also !=, <, <=, >, >=; '=' takes a,b,c "
                             "alternatives and shell patterns); repeat to combine")
    parser.add_argument("--group", action="store_true",
                        help="one row per configuration (runs sharing a config hash, i.e. differing "
                             "only in the seed): mean ± std over the seeds that finished, and n; "
                             "named by its preset (experiment=NAME), else network and variant, with "
                             "the config keys that tell apart groups that would share a name")
    parser.add_argument("--wide", action="store_true",
                        help="every column in the terminal (as in compare.md); by default the name, "
                             "test error, remaining, compression and epochs")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where compare.csv, compare.md and the plots go (default: the first PATH)")
    parser.add_argument("--no-plots", action="store_true", help="write the table files only")
    ns = parser.parse_args(args)
    try:
        with user_errors():
            result = compare(ns.paths, where=ns.where, sort=ns.sort, group=ns.group, out=ns.out,
                             plots=not ns.no_plots)
    except OSError as err:
        fail(f"could not write the comparison files ({err}); free space, or choose a writable folder with --out DIR.", code=1)
    # The table fits the terminal, or 80 columns where the output goes to a pipe or a file.
    console = stdout_console(highlight=False)
    table = rich_table(result.rows, result.grouped, wide=ns.wide)
    if ns.wide:
        # Every column was asked for: where the terminal is narrower than they need, the table
        # keeps its own width (for `less -S`, or a file) rather than fold them into slivers.
        console.width = max(console.width, Measurement.get(console, console.options.update_width(10_000), table).maximum)
    console.print(table)
    for s in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {s.path}: {s.reason}", markup=True)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", markup=True)
    what = "configurations" if result.grouped else "runs"
    console.print(f"{len(result.rows)} {what}, {sum(r.pareto for r in result.rows)} Pareto-optimal"
                  + (f", {len(result.skipped)} folder(s) skipped" if result.skipped else "")
                  + f"; wrote {', '.join(p.name for p in result.files)} in {result.out_dir}"
                  + ("" if ns.wide else " (--wide: every column)"))


def run_report(args: list[str]) -> None:
    from sensreg.run.report import write_report

    parser = _arg_parser(
        "sensreg report",
        "Writes report.md and PNGs for one run folder: error and remaining parameters per epoch,\n"
        "the threshold decisions, per-layer sparsity, and histograms of |w| and of the run's own\n"
        "sensitivity at the end (recomputed from model.pt on a few training batches of the run's\n"
        "dataset). Unfinished runs get a report of what they have so far.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (it holds summary.json)")
    parser.add_argument("--out", metavar="DIR", default=None, help="where the files go (default: RUN_DIR)")
    parser.add_argument("--batches", type=int, default=10, metavar="N",
                        help="training batches the sensitivity is averaged over (default 10; 0: skip it)")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="where the run's dataset is, if not at the data.root it was trained with")
    ns = parser.parse_args(args)
    if ns.batches < 0:
        fail("sensreg report: --batches must be 0 or more.")
    try:
        with user_errors():
            result = write_report(ns.run_dir, ns.out, ns.batches, ns.data_root)
    except OSError as err:
        fail(f"could not write the report ({err}); free space, or choose a writable folder with --out DIR.", code=1)
    console = Console(highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {result.path} and {len(result.images)} plot(s): "
                  f"{', '.join(p.name for p in result.images) or 'none'}")
