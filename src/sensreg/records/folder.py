"""A run folder: every file a run writes, where it is, and how it is read back.

``RunFolder`` knows the names of a run's files and writes each of them whole (``atomic.py``):
the composed config, one metrics row per epoch, the summary, the final model and the training
checkpoint. ``RunFolder.read`` is the one reader: it gives a ``RunRecord`` of whatever the folder
holds, however far the run got, and says what it could not read instead of raising. ``compare``,
``report``, ``eval`` and the results scripts all read run folders through it.

Which folder a run uses and whether it continues an earlier run there (``resolve``):

- A fresh run (``trainer.resume=false``) refuses a folder that already holds a run, unless
  that run failed before its first epoch (nothing to resume or lose).
- ``trainer.resume=true`` continues from ``last.pt`` in the run's own folder (a fixed
  ``hydra.run.dir`` / ``hydra.sweep.dir``, or a requeued cluster job); without one it starts
  from scratch, so that a requeued job that never checkpointed still runs. The records of the
  earlier run there are moved into a subfolder first (``RunFolder.set_aside``), never replaced.
- ``trainer.resume=PATH`` continues the run folder PATH (or the run whose ``last.pt`` PATH is).
- ``RunLock`` makes sure two processes never write into one folder at once.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import socket
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sensreg.records import checkpoint

from sensreg.records import train_state
from sensreg.records.summary import METRIC_COLUMNS, MetricsRow, RunSummary
from sensreg.atomic import TEMPORARY_GLOB, named_os_error, write_atomic, write_json
from sensreg.errors import RunError, UserError

CONFIG_NAME = "config.yaml"  # the composed config, resolved
METRICS_NAME = "metrics.csv"  # one row per finished epoch
SUMMARY_NAME = "summary.json"  # status, then the results
MODEL_NAME = "model.pt"  # the final model, compact (checkpoint.py)
CHECKPOINT_NAME = "last.pt"  # the training state to resume from (checkpoint.py)
LOG_NAME = "train.log"
LOCK_NAME = ".lock"
EARLIER_RUN = "earlier-run-"  # the subfolder a run started over in its folder moves the records into
# A pareto sweep's folder (sensreg.commands.pareto): the study, and its trials and front as JSON.
STUDY_DB, STUDY_JSON, STUDY_LOCK = "study.db", "study.json", "study.db.lock"
RUN_FILES = (SUMMARY_NAME, METRICS_NAME, CONFIG_NAME, MODEL_NAME)  # any of them marks a run folder


def relative_below(path: str | Path, base: Path) -> str:
    """``path`` relative to ``base`` where it is below it, else as given: how files that list run
    folders (compare.csv, a study's study.json) name them, so that they stay right when the
    folder holding them all is moved or checked out elsewhere."""
    rel = os.path.relpath(path, base)
    return str(path) if rel.startswith("..") else Path(rel).as_posix()


class RunFolderError(UserError, RuntimeError):
    """The run folder cannot be used as asked; the message says why and what to do."""


class RunFolderGone(RunError, RuntimeError):
    """The run folder, or the lock file this process holds in it, was removed while the run went on."""


# The lock files this process holds (RunLock): one removed under it means the folder is no longer
# this run's to write.
_HELD_LOCKS: set[Path] = set()


def _ended_before_its_first_epoch(folder: Path) -> bool:
    """Whether the run in ``folder`` failed or was stopped before it finished an epoch (a
    trainer.init file it could not read, a dataset it could not find, a Ctrl-C in its set-up),
    leaving nothing to resume or to lose: a fresh run may then take the folder over, its summary
    replacing the old one."""
    try:
        summary = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(summary, dict) and summary.get("status") in ("failed", "interrupted")
            and summary.get("epochs_completed") == 0
            and not any((folder / name).exists() for name in (CHECKPOINT_NAME, MODEL_NAME, METRICS_NAME)))


# Hydra's records of a run's command, in its folder (written by sensreg: see write_hydra_records).
HYDRA_RECORDS = ".hydra"
# Everything a run writes into its folder; anything else in it is the user's.
WRITTEN_BY_A_RUN = {CONFIG_NAME, METRICS_NAME, SUMMARY_NAME, LOG_NAME, MODEL_NAME, CHECKPOINT_NAME, LOCK_NAME,
                    HYDRA_RECORDS}


def occupied(folder: Path) -> str | None:
    """Why a fresh run (not resuming) may not write into the existing ``folder``, or None: it holds
    a run, or files a run did not write (a run never writes over a user's files)."""
    if (folder / LOCK_NAME).exists() and not writer_gone(folder):
        return RunLock(folder).busy()
    if (folder / SUMMARY_NAME).exists():  # a run that ended before its first epoch: nothing to lose, taken over
        return None if _ended_before_its_first_epoch(folder) else (
            f"the run folder {folder} already holds a run (summary.json). Add trainer.resume=true to continue "
            f"it, or choose another hydra.run.dir.")
    try:
        # (Hidden files count: a project folder's .git is the user's; a run's own temporary
        # files, .NAME.*.tmp, left by a kill, do not.)
        entries = sorted(p.name for p in folder.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))
    except OSError as err:
        return f"the folder {folder} cannot be listed ({err.strerror or err}); choose another hydra.run.dir."
    if not entries:
        return None
    foreign = [name for name in entries if name not in WRITTEN_BY_A_RUN]
    shown = ", ".join((foreign or entries)[:4]) + (", ..." if len(foreign or entries) > 4 else "")
    what = "files a run did not write" if foreign else "a run's files but no summary.json (not a run sensreg can continue)"
    return (f"the folder {folder} is not empty: it holds {what} ({shown}). A run writes into a folder of its "
            f"own and never over files it did not write; choose another hydra.run.dir (a new or empty folder).")


def resolve(hydra_dir: Path, resume: bool | str) -> tuple[Path, Path | None]:
    """The folder this run writes, and the checkpoint it continues from (None: from scratch)."""
    if resume is False:
        problem = occupied(hydra_dir)
        if problem is not None:
            raise RunFolderError(problem)
        return hydra_dir, None
    if resume is True:
        checkpoint = hydra_dir / CHECKPOINT_NAME
        return hydra_dir, checkpoint if checkpoint.exists() else None
    path = Path(resume).expanduser()
    folder = path.parent if path.is_file() else path
    if not folder.is_dir():
        raise RunFolderError(f"trainer.resume={resume}: there is no such run folder.")
    checkpoint = folder / CHECKPOINT_NAME
    if not checkpoint.is_file():
        raise RunFolderError(
            f"trainer.resume={resume}: {checkpoint} does not exist, so there is nothing to continue "
            f"from (a run writes it every trainer.checkpoint_every epochs and when it is stopped).")
    return folder, checkpoint


class RunLock:
    """An exclusive lock file in the run folder, held while a process writes there.

    A lock left behind by a process that no longer exists on this host is taken over, and so is
    one left by an earlier run of this very Slurm job: a requeued job keeps its job id and may
    start on another node, after Slurm has ended the process that held the lock.
    """

    def __init__(self, folder: Path, name: str = LOCK_NAME):
        self.path = Path(folder) / name
        self.held = False

    def busy(self) -> str:
        """The refusal while another process holds the lock."""
        return (f"the run folder {self.path.parent} is in use by {self._owner()} (lock file {self.path}). "
                f"Wait for that run to end, or choose another folder; if no such process exists any "
                f"more, delete the lock file.")

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}{_job_suffix()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not _lock_is_stale(self.path):
                    raise RunFolderError(self.busy()) from None
                self.path.unlink(missing_ok=True)
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(me)
            except OSError as err:  # a full disk: an empty lock left here would lock the folder for good
                self.path.unlink(missing_ok=True)
                raise named_os_error(err, self.path) from None
            self.held = True
            _HELD_LOCKS.add(self.path)
            # Temporary files of atomic writes that a killed process never renamed into place.
            for leftover in self.path.parent.glob(TEMPORARY_GLOB):
                leftover.unlink(missing_ok=True)
            return self
        raise RunFolderError(f"could not take the lock file {self.path}; another process keeps creating it.")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            _HELD_LOCKS.discard(self.path)

    def _owner(self) -> str:
        pid, host, _ = _read_lock(self.path)
        return f"process {pid} on {host}" if pid else "another process"


class StudyLock(RunLock):
    """The lock of a pareto sweep's study (SWEEP_DIR/study.db.lock), held by the one command
    that runs trials of it: two would mark each other's trials failed. Taken over when stale,
    as a run folder's is."""

    def __init__(self, sweep_dir: Path):
        super().__init__(sweep_dir, STUDY_LOCK)

    def busy(self) -> str:
        return (f"the study {self.path.parent / STUDY_DB} is in use by {self._owner()}, which runs a "
                f"sweep on it (lock file {self.path}). Wait for that command to end (running it again "
                f"then continues the study), or start another study in another folder with hydra.sweep.dir=DIR; "
                f"if no such process exists any more, delete the lock file.")


def writer_gone(folder: Path) -> bool:
    """Whether no process writes ``folder`` any more: it has no lock file, or the lock was left
    by a process of this host that has exited (SIGKILL, out of memory, a crashed machine).
    False while a live process holds it, and for another host's lock (we cannot tell)."""
    path = Path(folder) / LOCK_NAME
    return not path.exists() or _lock_is_stale(path)


def _job_suffix() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return f" slurm-job-{job}" if job else ""


def _read_lock(path: Path) -> tuple[int | None, str, str]:
    """The pid and host of a lock's owner, and its Slurm job (\"\" outside Slurm)."""
    try:
        pid, host, *job = path.read_text().split()
        return int(pid), host, " ".join(job)
    except (OSError, ValueError):
        return None, "", ""


# An empty lock file older than this is stale: its writer could not write its own name into it
# (the disk was full) and cannot have been holding it since; a younger one may be mid-write.
EMPTY_LOCK_GRACE_S = 60.0


def _lock_is_stale(path: Path) -> bool:
    try:
        info = path.stat()
    except OSError:
        return False
    if info.st_size == 0 and time.time() - info.st_mtime > EMPTY_LOCK_GRACE_S:
        return True
    pid, host, job = _read_lock(path)
    if job and f" {job}" == _job_suffix():
        return True  # this job's earlier run, before Slurm requeued it: that process is gone
    if pid is None or host != socket.gethostname():
        return False  # unreadable, or another machine's: we cannot tell, so it is not ours to take
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# --- writing and reading a run folder ------------------------------------------------------------

class RunFolder:
    """The files of one run folder, by name; each write replaces a file whole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / CONFIG_NAME)
    metrics_path = property(lambda self: self.path / METRICS_NAME)
    summary_path = property(lambda self: self.path / SUMMARY_NAME)
    model_path = property(lambda self: self.path / MODEL_NAME)
    checkpoint_path = property(lambda self: self.path / CHECKPOINT_NAME)
    log_path = property(lambda self: self.path / LOG_NAME)

    def lock(self) -> "RunLock":
        return RunLock(self.path)

    def gone(self) -> str | None:
        """What was removed under the run, if anything: the folder, or the lock file this process
        holds in it. A write would otherwise make the folder again, without its config, log or
        lock, or write beside another process that has since taken the folder."""
        if not self.path.is_dir():
            return f"the run folder {self.path} was removed"
        lock = self.path / LOCK_NAME
        if lock in _HELD_LOCKS and not lock.exists():
            return f"the lock file {lock} was removed, so another process may be writing this folder"
        return None

    def gone_error(self, vanished: bool = False) -> "RunFolderGone | None":
        """The error saying what was removed under the run (``gone``), and what is left; None
        while all is well. ``vanished``: a write just found its own file or folder missing,
        which happens in a folder being removed before the folder itself is gone."""
        why = self.gone() or (f"files of the run folder {self.path} were removed" if vanished else None)
        if why is None:
            return None
        kept = (f"{self.checkpoint_path} keeps the last checkpoint: once no other process writes "
                f"there, continue with trainer.resume={self.path}") if self.has_checkpoint() else \
            "What the run had written went with it: run the command again"
        return RunFolderGone(f"{why} while the run went on; it stops here and writes nothing more "
                             f"rather than make the folder again without its config, log and lock. {kept}.")

    @contextmanager
    def _writing(self):
        """Around each write: RunFolderGone where the folder or its lock was removed under the
        run, found before the write or by it (a file of its own that vanished mid-write)."""
        err = self.gone_error()
        if err is not None:
            raise err
        try:
            yield
        except FileNotFoundError:
            raise self.gone_error(vanished=True) from None

    def write_config(self, text: str) -> None:
        with self._writing():
            write_atomic(self.config_path, lambda f: f.write(text))

    def write_hydra_records(self, records: dict[str, str]) -> None:
        """Hydra's records of the command (``.hydra/config.yaml``, ``hydra.yaml``,
        ``overrides.yaml``: file name -> text), written once the run is accepted, never before."""
        with self._writing():
            for name, text in records.items():
                write_atomic(self.path / HYDRA_RECORDS / name, lambda f, text=text: f.write(text))

    def write_metrics(self, rows: list[MetricsRow]) -> None:
        with self._writing():
            write_metrics(self.metrics_path, rows)

    def write_summary(self, summary: RunSummary) -> None:
        with self._writing():
            write_json(self.summary_path, summary.as_dict())

    def save_model(self, model, masks, **meta) -> int:
        """model.pt (``checkpoint.save_model``); returns its size in bytes."""
        with self._writing():
            checkpoint.save_model(self.model_path, model, masks, **meta)
            return self.model_path.stat().st_size

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        with self._writing():
            train_state.save_training_state(self.checkpoint_path, state)

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def remove_unstarted(self) -> bool:
        """Remove the files of a run that failed or was stopped before its first epoch (its
        summary, config and log; nothing else is there to lose), as after an error in its input
        (a dataset that is not there) or a Ctrl-C in its set-up: such a run leaves no folder.
        A folder without a summary counts only while no process holds its lock: it may be
        another run's, setting up. Whether it did."""
        set_up_only = not self.summary_path.exists() and not (self.path / LOCK_NAME).exists() and \
            not any((self.path / name).exists() for name in (CHECKPOINT_NAME, MODEL_NAME, METRICS_NAME))
        if not (set_up_only or _ended_before_its_first_epoch(self.path)):
            return False
        for name in (SUMMARY_NAME, CONFIG_NAME, LOG_NAME):
            (self.path / name).unlink(missing_ok=True)
        return True

    def set_aside(self) -> Path | None:
        """Move the records of an earlier run that left no last.pt to continue from (its summary,
        metrics, config, log and model) into a subfolder ``earlier-run-<date>-<time>``, so that a
        run started over in this folder replaces none of them; returns the subfolder (None where
        there was no earlier run, or one that failed before its first epoch: nothing to keep).
        ``sensreg compare`` does not look below a run folder, so the subfolder is no run of its own."""
        if not self.is_run() or _ended_before_its_first_epoch(self.path):
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path / f"{EARLIER_RUN}{stamp}"
        n = 1
        while aside.exists():
            n += 1
            aside = self.path / f"{EARLIER_RUN}{stamp}-{n}"
        aside.mkdir()
        for name in (SUMMARY_NAME, METRICS_NAME, CONFIG_NAME, LOG_NAME, MODEL_NAME):
            if (self.path / name).exists():
                os.replace(self.path / name, aside / name)
        return aside

    def is_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    @classmethod
    def given(cls, run_dir: Path, command: str, error: type[Exception]) -> "RunFolder":
        """The run folder a user gave ``sensreg COMMAND``; ``error`` (the command's own error
        class) if the path is not a folder or holds no run."""
        if not run_dir.is_dir():
            raise error(f"{run_dir} is not a folder; give sensreg {command} a run folder, e.g. "
                        f"outputs/runs/<date>/<run>.")
        folder = cls(run_dir)
        if not folder.is_run():
            raise error(f"{run_dir} is not a run folder (it has none of {', '.join(RUN_FILES)}); "
                        f"`sensreg compare {run_dir}` lists the run folders below it.")
        return folder

    def read(self) -> "RunRecord":
        """Whatever the folder holds, never raising: a file that is missing or cannot be read
        is left empty in the record, with the reason in ``RunRecord.errors``."""
        record = RunRecord(self)
        try:
            summary = json.loads(_read_regular(self.summary_path))
            record.summary = summary if isinstance(summary, dict) else None
        except (OSError, ValueError) as err:  # ValueError covers JSONDecodeError and bad UTF-8
            record.errors[SUMMARY_NAME] = err
        try:
            config = yaml.safe_load(_read_regular(self.config_path))
            record.config = config if isinstance(config, dict) else {}
        except (OSError, ValueError, yaml.YAMLError) as err:
            record.errors[CONFIG_NAME] = err
        if self.metrics_path.exists():
            try:
                _check_regular(self.metrics_path)
                record.metrics = read_metrics(self.metrics_path)
            except (OSError, ValueError, csv.Error) as err:
                record.errors[METRICS_NAME] = err
        return record


@dataclass
class RunRecord:
    """What a run folder holds, as read by ``RunFolder.read``.

    ``summary``: summary.json, None where it is missing, unreadable or not a JSON object.
    ``config``: config.yaml ({} likewise). ``metrics``: the complete rows of metrics.csv, as
    floats (a torn last line is left out: that epoch is not done). ``errors``: the exception
    met reading each file that could not be read (FileNotFoundError for a missing one).
    """

    folder: RunFolder
    summary: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, float]] = field(default_factory=list)
    errors: dict[str, Exception] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def status(self) -> str | None:
        """The summary's status; ``abandoned`` for a run that says running but whose process
        is gone (continue it with trainer.resume); None without a readable summary."""
        status = (self.summary or {}).get("status")
        if not isinstance(status, str):
            return None
        return "abandoned" if status == "running" and writer_gone(self.path) else status

    def section(self, key: str) -> dict[str, Any]:
        """A section of the config (``trainer``, ``sens``...), {} where it is missing."""
        value = self.config.get(key)
        return value if isinstance(value, dict) else {}


def write_metrics(path: Path, rows: list[MetricsRow]) -> None:
    """metrics.csv, one row per epoch; rewritten whole each epoch (it is small)."""
    def write(f) -> None:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: _csv_value(getattr(row, k)) for k in METRIC_COLUMNS})
    write_atomic(path, write)


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision, so a reader gets back exactly what was logged
    return "" if v is None else v


def _check_regular(path: Path) -> None:
    """An OSError unless ``path`` is a regular file (a FIFO or a device would block its reader for
    ever, a folder cannot be read); FileNotFoundError for a missing one, as reading would raise."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))


def _read_regular(path: Path) -> str:
    """The text of ``path``, a regular file (``_check_regular``)."""
    _check_regular(path)
    return path.read_text(encoding="utf-8")


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The complete rows of a metrics.csv as floats (blank: nan), ``epoch`` as an int."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            if None in raw.values():
                break  # a torn last line (fewer fields than the header): the epoch is not done
            try:
                rows.append({k: float(v) if v not in ("", None) else float("nan") for k, v in raw.items()})
            except (TypeError, ValueError):
                break  # a torn last line: keep the complete epochs before it
    for r in rows:
        r["epoch"] = int(r["epoch"])
    return [r for r in rows if {"epoch", "val_error", "remaining_pct"} <= set(r)]
