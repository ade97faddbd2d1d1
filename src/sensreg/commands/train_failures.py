"""How a training job that cannot go on ends: one message naming what happened and what to
run next, and the exit code (`commands/train.py` calls these from its except clauses)."""

from __future__ import annotations

from sensreg.commands.console import fail, remove_if_empty, stop_code, stopped_by
from sensreg.errors import first_line

def interrupted(err, folder, config, main_process: bool) -> None:
    """A stop (Ctrl-C, SIGTERM) the run handled: it wrote what it could."""
    run_dir = folder.path
    if folder.has_checkpoint():
        fail(f"{err}: the run folder {run_dir} holds a checkpoint and says status: interrupted. "
             f"Continue it with `sensreg train <the same overrides> trainer.resume={run_dir}`.",
             code=err.exit_code)
    if main_process and folder.remove_unstarted():
        remove_if_empty(run_dir)
        fail(f"{err} before the first epoch ended: nothing was kept (no checkpoint, metrics or "
             f"model), and the run folder is removed. Run the command again.", code=err.exit_code)
    fail(f"{err} before the run wrote its first checkpoint (trainer.checkpoint_every="
         f"{config.trainer.checkpoint_every}), so there is nothing to continue from. The same command with "
         f"trainer.resume=true starts the run over in {run_dir}, keeping these records in a subfolder.",
         code=err.exit_code)


def stopped_at_once(err: BaseException, folder, main_process: bool) -> None:
    """A second Ctrl-C, or a stop before the run's own handler was in place."""
    by, code, run_dir = stopped_by(err), stop_code(err), folder.path
    if folder.has_checkpoint():
        fail(f"interrupted at once ({by}); the run folder {run_dir} keeps its last checkpoint: continue "
             f"with `sensreg train <the same overrides> trainer.resume={run_dir}`.", code=code)
    if main_process and folder.remove_unstarted():
        remove_if_empty(run_dir)
        fail(f"interrupted during the set-up ({by}), before training began: nothing was trained, and the "
             f"run folder's first files are removed. Run the command again.", code=code)
    fail(f"interrupted at once ({by}), before the run wrote its first checkpoint: nothing to continue "
         f"from (the run folder {run_dir} keeps what it wrote). Run the command again.", code=code)


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: torch's OutOfMemoryError (a GPU's), the CPU
    allocator's RuntimeError, or Python's MemoryError."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def no_memory(err: BaseException, folder, config) -> None:
    """Out of memory: the batch sizes to lower, and how to go on."""
    run_dir = folder.path
    then = (f"continue with `sensreg train <the same overrides> trainer.resume={run_dir}` and a smaller batch"
            if folder.has_checkpoint() else "run it again with a smaller batch")
    fail(f"out of memory ({first_line(err, 200, type(err).__name__)}) training {config.model.name} with trainer.batch_size="
         f"{config.trainer.batch_size} (and data.eval_batch_size={config.data.eval_batch_size} for evaluation) "
         f"on {config.trainer.device}. Lower trainer.batch_size or data.eval_batch_size, or use a smaller "
         f"model or trainer.precision=bf16; {then}.", code=1)


def write_failed(err: OSError, folder) -> None:
    """A file of the run folder that could not be read or written (a full disk, permissions), or
    the folder removed under the run."""
    run_dir = folder.path
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
