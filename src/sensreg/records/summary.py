"""What a run records, field by field: one row of metrics.csv per finished epoch (``MetricsRow``)
and summary.json (``RunSummary``). Each class is the one definition of its file's columns or
keys, and of their order: the loop builds the rows, the run's life (``lifecycle.py``) fills in
the summary, and ``RunFolder`` writes both from these."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(kw_only=True)
class MetricsRow:
    """One epoch of metrics.csv; its fields, in this order, are the file's columns."""

    epoch: int  # epochs completed, this one included
    eta: float  # the learning rate of the epoch
    lam: float  # the shrink rate of the epoch (0 in the dense warm-up)
    train_loss: float  # the mean over the epoch's batches
    val_loss: float
    val_error: float
    remaining_pct: float  # of the prunable parameters, after the epoch's pruning decision
    threshold: float | None  # the last threshold the pruning schedule applied
    # The mean insensitivity max(0, 1 - S) of the kept regularized weights at the epoch's last
    # step, and the share of them below 0.5 (blank without a regularizer).
    insens_mean: float | None = None
    insens_below_half: float | None = None
    seconds: float  # the epoch's wall time, its validation and pruning decision included

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "MetricsRow":
        """A row as last.pt holds it (``asdict``); a key that is no column is left out, one that is
        missing (a column added since the row was saved) left blank."""
        return cls(**{k: v for k, v in row.items() if k in METRIC_COLUMNS})


METRIC_COLUMNS = tuple(f.name for f in fields(MetricsRow))


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


# The value of a summary field that the run has not reached (or that does not apply to it): its
# key is left out of summary.json. (None is a value the file holds: null.)
ABSENT: Any = _Absent()


@dataclass(slots=True)
class RunSummary:
    """summary.json: its keys are these fields, in this order, less those left ``ABSENT``.

    A run starts with the first block (status ``running``); the set-up adds its device, the
    trackers their run ids; a run that ends early adds ``error`` and where it got to (status
    ``failed`` or ``interrupted``), a finished one its results (status ``completed``). (Slots:
    a misspelt field raises rather than adding a key of its own.)
    """

    status: str  # running, completed, failed, interrupted
    config_hash: str  # of the config without the seed and where the run executes
    seed: int
    model: str
    data: str
    sens: str
    versions: dict[str, str]  # of sensreg, python, torch, torchvision, hydra
    git_commit: str | None
    started: str  # the first start, for a resumed run too
    resumed: list[dict[str, Any]] = ABSENT  # each continuation: when, from which epoch and batch
    processes: int = ABSENT  # a run on several processes: how many
    device: str = ABSENT
    trackers: dict[str, str] = ABSENT  # the tracker runs' ids (trackers.py)
    error: str = ABSENT  # what ended the run early
    epochs_completed: int = ABSENT
    test_error: float = ABSENT
    test_top5_error: float | None = ABSENT
    test_loss: float = ABSENT
    val_error: float = ABSENT  # of the last epoch
    val_loss: float = ABSENT
    remaining_pct: float = ABSENT  # of the prunable parameters
    compression: float = ABSENT
    remaining_pct_all: float = ABSENT  # of all parameters
    compression_all: float = ABSENT
    sparsity: dict[str, Any] = ABSENT  # pruning.sparsity_stats: per layer, prunable, all, FLOPs
    flops: dict[str, Any] = ABSENT
    structure: dict[str, Any] | None = ABSENT  # the compacted network (structure.py); None off process 0
    thresholds: list[dict[str, Any]] = ABSENT  # every pruning decision
    wall_time_s: float = ABSENT  # all sessions of the run together
    checkpoint_to_resume: str = ABSENT  # a run that ended early with a last.pt to continue from
    checkpoint: str = ABSENT  # model.pt
    budget: dict[str, Any] = ABSENT  # what the result cost (lifecycle.budget)
    checkpoint_bytes: int = ABSENT  # model.pt's size (process 0 only)

    def update(self, **values: Any) -> None:
        """Set several fields at once."""
        for name, value in values.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        """summary.json's content: the fields the run has reached, in their order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not ABSENT}
