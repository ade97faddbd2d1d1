"""Positions inside a run, as configs give them: the pruning window (prune.start_epoch,
prune.stop_epoch) and the milestones of the eta and lambda step schedules.

A position is one of
- an integer: an epoch number (1-based for the pruning window; for a milestone, the epoch after
  which the factor changes); a negative one counts back from the last epoch (-4 of 20 is 16);
- a float in [0, 1]: a fraction of the run (0.8 of 20 epochs is 16), so that a preset keeps its
  shape at any trainer.epochs, one epoch included. Where a schedule acts on training steps
  (gradual magnitude pruning), a fraction is resolved in steps (0.8 of one 540-step epoch is
  step 432); where it acts on epochs, to the nearest epoch.

An integer always means epochs: 1 is the first epoch, 1.0 the end of the run.
"""

from __future__ import annotations

from typing import Any

Position = int | float


def is_fraction(position: Any) -> bool:
    """Whether a config value is a fraction of the run (a float) rather than an epoch number."""
    return isinstance(position, float)


def valid(position: Any) -> bool:
    """An integer (any sign), or a finite float in [0, 1]."""
    if isinstance(position, bool):
        return False
    if isinstance(position, int):
        return True
    return isinstance(position, float) and 0.0 <= position <= 1.0


def _nearest(x: float) -> int:
    # Halves round up (0.5 of one epoch is epoch 1), not to the even neighbour as round() does.
    return int(x + 0.5)


def epoch_at(position: Position, epochs: int) -> int:
    """The epoch number a position names in a run of ``epochs`` epochs: an integer as it is, or
    counted back from the last when negative; a fraction of the run rounded to the nearest epoch
    (0 at the start). Used for a milestone and for the last epoch of a window."""
    if is_fraction(position):
        return _nearest(position * epochs)
    return position if position >= 0 else epochs + position


def first_epoch_at(position: Position, epochs: int) -> int:
    """The first epoch (1-based) of a window that starts at ``position``: an integer as it is; a
    fraction f, the epoch that begins where f of the run is done (0.5 of 20 epochs is epoch 11)."""
    if is_fraction(position):
        return epoch_at(position, epochs) + 1
    return epoch_at(position, epochs)


def step_at(position: Position, epochs: int, steps_per_epoch: int, first: bool = False) -> int:
    """A position as a count of training steps done, for schedules that act on steps: a fraction
    of all the run's steps, or the end of the epoch an integer names (``first``: the end of the
    epoch before it, where a window that starts with that epoch begins)."""
    if is_fraction(position):
        return _nearest(position * epochs * steps_per_epoch)
    epoch = epoch_at(position, epochs)
    return (epoch - 1 if first else epoch) * steps_per_epoch

