"""The published figures the plots draw beside the runs (``sensreg/references.yaml``)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml



# --- published reference points ----------------------------------------------------------------

@lru_cache(maxsize=1)
def load_references() -> tuple[dict, ...]:
    """The published figures shipped in ``references.yaml``, each with its source attached."""
    raw = yaml.safe_load(resources.files("sensreg").joinpath("references.yaml").read_text(encoding="utf-8"))
    sources = raw.get("sources", {})
    return tuple({**ref, "remaining_pct": 100.0 / ref["compression"], "source": sources[ref["source"]],
                  "budget": ref.get("budget"),
                  "budget_source": sources[ref["budget_source"]] if ref.get("budget_source") else None}
                 for ref in raw.get("references", []))


def references_for(model: str | None, data: str | None) -> list[dict]:
    """Reference points for exactly this network and dataset (none for synthetic data, say)."""
    return [r for r in load_references() if r["model"] == model and r["data"] == data]


