"""The jobs of a sweep run in this process (Hydra's basic launcher): a job that fails, or whose
values are refused, does not stop the others, and the sweep ends with one line counting them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sensreg.commands.console import fail


@dataclass
class SweepJob:
    """One job of a sweep run in this process: its run folder, its overrides, and how it ended."""

    folder: Path
    overrides: list[str]
    failed: bool = False
    refused: bool = False  # refused before any training (exit code 2 on its own)


def count_failed(jobs: list[SweepJob]) -> None:
    """A sweep whose jobs failed ends with one line counting and naming them, and exit code 1 (2
    where every job was refused before training: nothing was trained at all). Each failed job's
    own message was printed as it failed, and the sweep went on with the next."""
    failed = [j for j in jobs if j.failed]
    if not failed:
        return
    common = set.intersection(*(set(j.overrides) for j in jobs))

    def named(job: SweepJob) -> str:
        values = " ".join(o for o in job.overrides if o not in common) or "its overrides"
        where = f"run folder {job.folder}" if job.folder.exists() else "refused, no run folder"
        return f"{values} ({where})"

    fail(f"{len(failed)} of {len(jobs)} jobs of the sweep failed: {'; '.join(map(named, failed))}. "
         f"Each one's message is above; a failed run's summary.json says why too.",
         code=2 if all(j.refused for j in jobs) else 1)


def run_job(train: Callable[[], dict | None], folder: Path, overrides: list[str], jobs: list[SweepJob] | None) -> dict | None:
    """Run one job of a sweep, recorded in ``jobs``: its summary, or None where it failed or was
    refused (its message printed, exit code 2 on its own). A stop (Ctrl-C, a scheduler's signal)
    or a failed write still stops the sweep."""
    job = SweepJob(folder, overrides)
    if jobs is not None:
        jobs.append(job)
    try:
        result = train()
    except SystemExit as exit_:
        if exit_.code != 2:
            raise
        result, job.refused = None, True
    job.failed = result is None
    return result
