"""Which folder a run writes, whether it continues an earlier run there, and who owns it.

- A fresh run (``trainer.resume=false``) refuses a folder that already holds a run.
- ``trainer.resume=true`` continues from ``last.pt`` in the run's own folder (a fixed
  ``hydra.run.dir`` / ``hydra.sweep.dir``, or a requeued cluster job); without one it starts
  from scratch, so that a requeued job that never checkpointed still runs.
- ``trainer.resume=PATH`` continues the run folder PATH (or the run whose ``last.pt`` PATH is).
- ``RunLock`` makes sure two processes never write into one folder at once.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

CHECKPOINT_NAME = "last.pt"
LOCK_NAME = ".lock"
TEMPORARY_GLOB = ".*.tmp"  # what report.write_atomic names its temporary files


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked; the message says why and what to do."""


def resolve(hydra_dir: Path, resume: bool | str) -> tuple[Path, Path | None]:
    """The folder this run writes, and the checkpoint it continues from (None: from scratch)."""
    if resume is False:
        if (hydra_dir / "summary.json").exists():
            raise RunFolderError(
                f"the run folder {hydra_dir} already holds a run (summary.json). Add "
                f"trainer.resume=true to continue it, or choose another hydra.run.dir.")
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

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}{_job_suffix()}\n"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not _lock_is_stale(self.path):
                    raise RunFolderError(
                        f"the run folder {self.path.parent} is in use by {self._owner()} (lock file "
                        f"{self.path}). Wait for that run to end, or choose another folder; if no "
                        f"such process exists any more, delete the lock file.") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            # Temporary files of atomic writes that a killed process never renamed into place.
            for leftover in self.path.parent.glob(TEMPORARY_GLOB):
                leftover.unlink(missing_ok=True)
            return self
        raise RunFolderError(f"could not take the lock file {self.path}; another process keeps creating it.")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _owner(self) -> str:
        pid, host, _ = _read_lock(self.path)
        return f"process {pid} on {host}" if pid else "another process"


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


def _lock_is_stale(path: Path) -> bool:
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
