"""How the commands report a mistake: one paragraph on stderr, no traceback, an exit code."""

from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from sensreg.run.interrupt import Stopped

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def stopped_by(err: BaseException) -> str:
    """What stopped a command, for its message: Ctrl-C, or the signal's name."""
    import signal

    return signal.Signals(err.signum).name if isinstance(err, Stopped) else "Ctrl-C"


def stop_code(err: BaseException) -> int:
    """The exit code of a command stopped by ``err``: 128 plus the signal's number (130: Ctrl-C)."""
    return 128 + err.signum if isinstance(err, Stopped) else 130

def fail(message: str, code: int = 2) -> None:
    """Print a user-facing error and exit; no traceback. Of the processes of a distributed run,
    which all meet the same error, only the first prints it."""
    if os.environ.get("RANK", "0") == "0":
        from rich.markup import escape  # the message is text: "[slurm]" or "[abc]" must show as written

        err_console.print(f"[bold red]error:[/bold red] {escape(message)}", markup=True)
    raise SystemExit(code)


def arg_parser(prog: str, description: str, epilog: str = ""):
    """An argparse parser whose mistakes end like every other user mistake: fail(), exit 2."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            fail(f"{prog}: {message}. See `{prog} --help`.")

    return Parser(prog=prog, description=description, epilog=epilog,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


@contextmanager
def user_errors(run=None, main_process: bool = True, unused_folder: Path | None = None, advice: str = ""):
    """The one handler of the errors a user causes (``errors.UserError``): the message on stderr,
    no traceback, and the exit code.

    ``run``: the RunFolder of a training run under way. An error that ends a run (``ends_run``:
    a checkpoint that does not fit, divergence) is logged, recorded in the run's summary
    (``run.train`` did that) and exits 1 naming the folder; in a sweep the job fails and the
    sweep goes on (the with-block is left without an exception). Any other user error (a
    dataset that is not there, a busy folder) means nothing was trained: exit 2, and a run
    folder that this run had started and that holds nothing else is removed.
    ``unused_folder``: Hydra's run folder, removed if nothing was written there. ``advice``:
    appended to "Nothing was trained." in training.
    """
    from sensreg.errors import UserError

    try:
        yield
    except UserError as err:
        training = run is not None or unused_folder is not None
        if unused_folder is not None:
            remove_if_empty(unused_folder)
        if run is not None and not err.ends_run and run.remove_unstarted():
            remove_if_empty(run.path)
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


def remove_if_empty(run_dir: Path) -> None:
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
