"""What a pruned network costs to run: the units each layer keeps and the compacted network's
parameters and multiply-adds (``method.compaction``), as summary.json's ``structure``.

A run records it at its end, from its masks, and ``sensreg eval`` recomputes it from model.pt;
``sensreg export`` writes the compacted network itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and the compaction load when a network is compacted, not when a summary is read
    from torch import nn

    from sensreg.method.compaction import Compaction

log = logging.getLogger("sensreg")

# Test images the compaction is checked on (its output against the masked network's).
EXAMPLE_SAMPLES = 16


def example_batch(split) -> Any:
    """The first EXAMPLE_SAMPLES inputs of a split, as a run's model takes them."""
    from sensreg.data import batches

    x, _ = next(iter(batches(split, EXAMPLE_SAMPLES)))
    return x


def compact_network(model: "nn.Module", split, masks: Any = None) -> "Compaction":
    """``compact`` of ``model`` (with ``masks``), checked on the first images of ``split``."""
    from sensreg.method.compaction import compact

    return compact(model, example_batch(split), masks)


def network_structure(model: "nn.Module", split, masks: Any = None) -> dict[str, Any]:
    """summary.json's ``structure``: ``Compaction.to_dict()``. Where the compaction itself fails
    (a bug, or a model it does not know), the run keeps its results and the record says why."""
    try:
        return compact_network(model, split, masks).to_dict()
    except Exception as err:  # noqa: BLE001 - a finished run is never lost to its structure record
        log.warning("warning: the compacted network could not be worked out (%s: %s); the run's other "
                    "figures stand.", type(err).__name__, err)
        return {"error": f"{type(err).__name__}: {err}"}


def ratio(structure: dict[str, Any] | None, key: str) -> float | None:
    """How many times fewer parameters (``key`` "params") or multiply-adds ("macs") the
    compacted network has than the dense one; None where the structure is not recorded."""
    counts = (structure or {}).get(key) if isinstance(structure, dict) else None
    if not isinstance(counts, dict) or not counts.get("compact") or not isinstance(counts.get("dense"), (int, float)):
        return None
    return counts["dense"] / counts["compact"]


def structure_lines(structure: dict[str, Any] | None) -> list[str]:
    """The compacted network in a few lines (run log, eval): its cost against the dense
    network's, the units each layer keeps, and what could not be compacted."""
    if not isinstance(structure, dict) or "params" not in structure:
        why = (structure or {}).get("error") if isinstance(structure, dict) else None
        return [f"compacted network: not recorded{f' ({why})' if why else ''}"]
    p, m = structure["params"], structure["macs"]
    lines = [f"compacted network: {p['compact']:,} parameters ({ratio(structure, 'params'):.1f}x fewer than "
             f"the dense {p['dense']:,}), {m['compact']:,} multiply-adds per sample "
             f"({ratio(structure, 'macs'):.1f}x fewer than {m['dense']:,}; nonzero weights alone: "
             f"{m['nonzero']:,})"]
    units = structure.get("units") or {}
    inputs = structure.get("inputs") or {}
    if units:
        first = next(iter(units))
        kept = [f"input {inputs[first][0]}/{inputs[first][1]}"] if first in inputs else []
        kept += [f"{name} {k}/{n}" for name, (k, n) in units.items()]
        lines.append("units kept: " + ", ".join(kept))
    lines += [f"not compacted: {note}" for note in structure.get("not_compacted") or []]
    return lines
