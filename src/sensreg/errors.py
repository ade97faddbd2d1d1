"""The errors a user causes, and how their messages are written.

Every such error derives from ``UserError``: its message is one paragraph that names the
problem and the fix, and the command line prints it without a traceback (``commands/cli.py`` has one
handler for them all). Each module keeps its own subclass next to the code that raises it
(``ConfigError`` in ``run/config.py``, ``PerSampleError`` in ``method/per_sample.py``, ...), so that
a reader of that module sees what it may raise.

Exit codes: 2 for a mistake found before anything was trained (a bad value, an unusable
folder or file, a dataset that is not there); 1 for a training run that began and then failed
(``ends_run``: a checkpoint that does not fit, divergence); 128 + n for a run stopped by signal n
(``interrupt.Interrupted``).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is the one-paragraph message."""

    exit_code = 2
    # Raised by a training run under way: `sensreg train` logs it, records it in summary.json as
    # the run's failure, exits 1, and a sweep goes on with its next job. False: nothing was
    # trained, the value, folder or dataset named in the message is to be fixed.
    ends_run = False


class RunError(UserError):
    """A training run that began could not go on; the run folder says how far it got."""

    exit_code = 1
    ends_run = True


class CheckpointError(RunError, ValueError):
    """A checkpoint that cannot be used (a file, or saved masks that do not fit the network); the
    message names the path or the parameters. Here rather than in ``records/checkpoint.py`` because
    the method's masks raise it too, and the method imports nothing of the run."""


class UnknownName(UserError, KeyError, ValueError):
    """A name that no registry entry has (a variant, schedule, model, dataset): the message lists
    the known ones. A KeyError, as a failed registry lookup is, and a ValueError, as every misused
    argument of the API is."""

    def __str__(self) -> str:  # (KeyError's would quote the message)
        return str(self.args[0])


def lookup(registry, name, what: str):
    """``registry[name]``; an unknown ``name`` raises UnknownName listing the known ones."""
    try:
        return registry[name]
    except (KeyError, TypeError):  # (TypeError: an unhashable name, a list from a config)
        raise UnknownName(f"unknown {what} {name!r}; known: {', '.join(map(str, registry))}") from None


class Diverged(RunError, FloatingPointError):
    """The training loss or the weights became non-finite."""


def first_line(err: BaseException, limit: int | None = None, empty: str = "no message") -> str:
    """The first line of an exception's message, cut at ``limit`` characters, for a one-line
    message naming it; ``empty`` where it has none."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else empty


def few_names(names: list[str], shown: int = 4, sep: str = ", ") -> str:
    """The first ``shown`` names and how many more, for messages."""
    return sep.join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
