"""Table formatters shared by the run log, ``sensreg eval``, ``sensreg compare``,
``sensreg report`` and the results scripts: Markdown tables and the per-layer sparsity table."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                   right: Iterable[str] = ()) -> list[str]:
    """The lines of a Markdown table; the columns named in ``right`` are right-aligned."""
    right = set(right)
    return ["| " + " | ".join(header) + " |",
            "|" + "|".join(" ---: " if h in right else " --- " for h in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def layer_table(stats: dict, title: str = "Remaining parameters per layer") -> Table:
    """A rich table of per-layer sparsity from ``pruning.sparsity_stats``."""
    t = Table(title=title)
    for col, justify in (("layer", "left"), ("shape", "left"), ("params", "right"), ("nonzero", "right"),
                         ("remaining", "right"), ("compression", "right"), ("FLOPs left", "right")):
        t.add_column(col, justify=justify)
    for r in stats["layers"]:
        flops = f"{100 * r['flops_remaining'] / r['flops_dense']:.2f}%" if r["flops_dense"] else "-"
        t.add_row(r["name"] + ("" if r["prunable"] else " (not pruned)"), "x".join(map(str, r["shape"])),
                  f"{r['params']:,}", f"{r['nonzero']:,}", f"{r['remaining_pct']:.2f}%",
                  f"{r['compression']:.1f}x", flops)
    for label, key in (("prunable", "prunable"), ("all parameters", "all")):
        tot = stats[key]
        t.add_row(f"[bold]{label}[/bold]", "", f"{tot['params']:,}", f"{tot['nonzero']:,}",
                  f"{tot['remaining_pct']:.2f}%", f"{tot['compression']:.1f}x",
                  f"{stats['flops']['remaining_pct']:.2f}%" if key == "all" else "")
    return t


def render_text(renderable, width: int = 110) -> str:
    """A rich renderable as plain text, for log files."""
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, force_terminal=False).print(renderable)
    return buf.getvalue()
