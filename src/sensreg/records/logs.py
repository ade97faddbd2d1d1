"""A run's log: one line per event on stdout and in the run folder's train.log."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(log_file: Path | None) -> None:
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
