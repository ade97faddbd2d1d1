"""Graceful stops: SIGINT and SIGTERM ask the training loop to stop after the current step.

The loop polls ``StopSignals.requested`` after every step; when set, it writes a checkpoint
and the summary (status ``interrupted``) and raises ``Interrupted``. The evaluations (each
epoch's validation, the threshold search's, the final test) poll it after every batch
(``StopSignals.check``): a stop there keeps the last checkpoint written, and the resumed run
does that epoch's end (or the final test) again. The first signal is answered with a line at
once, saying what happens next. A second SIGINT while the first is being honoured raises
``KeyboardInterrupt`` at once, for a user who cannot wait. SIGTERM is what Slurm and most
schedulers send before they kill a job.

A job launched by submitit (Hydra's submitit launcher) gets SIGUSR2 before preemption or its
time limit, and submitit's own handler requeues it. Where such a handler is installed, SIGUSR2
is caught too: the checkpoint is written first, then submitit's handler runs, so the requeued
job (with ``trainer.resume=true``) continues from the very step where this one stopped.
"""

from __future__ import annotations

import os
import signal
import threading


class Interrupted(Exception):
    """Training stopped on request; the run folder holds a checkpoint to resume from."""

    def __init__(self, signal_name: str, exit_code: int):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name
        self.exit_code = exit_code


class StopSignals:
    """Context manager that turns SIGINT/SIGTERM into a flag for the duration of training.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """

    HANDLED = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
    CHAINED = (signal.SIGUSR2,) if hasattr(signal, "SIGUSR2") else ()  # only where a handler exists

    def __init__(self) -> None:
        self.requested: str | None = None
        self.exit_code = 0
        self._signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: leave now
        if self.requested is None:
            self.requested = signal.Signals(signum).name
            self._signum = signum
            self.exit_code = 128 + signum  # the shell's convention for death by a signal
            if os.environ.get("RANK", "0") == "0":
                # At once, though the stop waits for the step or evaluation batch under way; a
                # raw write, as the signal may have come in the middle of a print to stderr.
                os.write(2, f"{self.requested}: stopping after the training step or evaluation batch "
                            f"under way; the run folder keeps its last checkpoint, to continue with "
                            f"trainer.resume. Press Ctrl-C again to exit at once.\n".encode())

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.HANDLED:
                self._previous[s] = signal.signal(s, self._handle)
            for s in self.CHAINED:
                if _is_python_handler(signal.getsignal(s)):
                    self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def agree(self) -> None:
        """Another process of a distributed run was asked to stop: stop here too, at the same
        step, as if this one had been sent SIGTERM."""
        if self.requested is None:
            self.requested = "SIGTERM (to another process of the run)"
            self.exit_code = 128 + signal.SIGTERM

    def check(self, dist) -> None:
        """Between two batches of an evaluation: raise ``Interrupted`` if a stop was requested of
        this process or (``dist``) of any other, all at the same batch."""
        if dist.any(self.requested is not None):
            self.agree()
            self.raise_if_requested()

    def raise_if_requested(self) -> None:
        """Raise ``Interrupted`` if a stop was requested, after handing the signal on to the
        handler that was there before (a scheduler's requeue), if it was a Python function."""
        if self.requested is None:
            return
        previous = self._previous.get(self._signum)
        if _is_python_handler(previous):
            previous(self._signum, None)
        raise Interrupted(self.requested, self.exit_code)


class Stopped(KeyboardInterrupt):
    """A stop by a signal other than SIGINT, raised where Ctrl-C's KeyboardInterrupt would be
    (``raise_stopped``, the command line's handler until a run installs its own)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def raise_stopped(signum: int, frame) -> None:
    """SIGTERM (what timeout, Slurm and docker stop send) and SIGHUP (a closed terminal) stop a
    command as Ctrl-C does, so that its temporary files are removed on the way out."""
    raise Stopped(signum)


def _is_python_handler(handler) -> bool:
    # Not SIG_DFL/SIG_IGN/None, not Python's own SIGINT handler (it raises KeyboardInterrupt), and
    # not the command line's own (a run that stops in order has nothing to hand on to it).
    return callable(handler) and handler is not signal.default_int_handler and handler is not raise_stopped
