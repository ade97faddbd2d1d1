"""Table formatters shared by the run log, ``sensreg eval``, ``sensreg compare``,
``sensreg report`` and the results scripts: Markdown tables, the per-layer sparsity table, and
``FitTable``, a console table that fits the width it is printed in."""

from __future__ import annotations

import copy
import io
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Column, Table

PIPED_WIDTH = 80  # the width of a table printed into a pipe or a file
MIN_NAME_WIDTH = 12  # a name folded into less than this is unreadable: every column folds instead


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                   right: Iterable[str] = ()) -> list[str]:
    """The lines of a Markdown table; the columns named in ``right`` are right-aligned."""
    right = set(right)
    return ["| " + " | ".join(header) + " |",
            "|" + "|".join(" ---: " if h in right else " --- " for h in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def stdout_console(**kwargs) -> Console:
    """A console for stdout: the terminal's width on a terminal, 80 columns in a pipe or a file.

    rich alone takes the width of stdin or stderr where they are a terminal, so output piped
    into a file would be as wide as the terminal it was typed in. COLUMNS, where it is set,
    still says how wide (as it does for rich on a terminal)."""
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else PIPED_WIDTH
    return Console(width=width, **kwargs)


class FitTable(Table):
    """A rich Table that fits the width it is printed in, and never cuts a name.

    rich alone, given a table wider than the console, narrows every column alike and cuts
    what no longer fits with "…" (names included). Here instead:

    - a column's ``min_width`` is kept: name columns set it to their longest name, so a name
      is never wrapped, folded or cut;
    - other columns wrap at spaces but never get narrower than their longest word;
    - columns added with ``drop=N`` are left out, lowest N first, while the rest still does
      not fit, and the caption says which;
    - if even then it does not fit, names made of several words (a group's ``lenet300 spec
      lam=1e-3``) wrap at their spaces; a name longer than the line is folded onto more lines
      beside the other columns; only where not even that fits does every column fold. Nothing
      is ever cut.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop_rank: dict[int, int] = {}  # column index -> order in which it gives way
        self.cells_whole: set[int] = set()  # columns whose cells never wrap (their header may)

    def add_column(self, header="", footer="", *, drop: int | None = None, cells_whole: bool = False,
                   **kwargs) -> None:  # type: ignore[override]
        kwargs.setdefault("overflow", "fold")  # what must give way folds onto the next line, never "…"
        super().add_column(header, footer, **kwargs)
        if drop is not None:
            self.drop_rank[len(self.columns) - 1] = drop
        if cells_whole:
            self.cells_whole.add(len(self.columns) - 1)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from Table.__rich_console__(self.fitted(console, options.max_width), console, options)

    def fitted(self, console: Console, width: int) -> Table:
        """A copy of the table, with fixed column widths, that is at most ``width`` wide."""
        natural = console.options.update_width(10_000)
        spans = [self._span(console, natural, c) for c in self.columns]  # (word, kept whole, line)
        shown = list(range(len(self.columns)))
        droppable = sorted(self.drop_rank, key=lambda i: self.drop_rank[i])
        while sum(spans[i][1] for i in shown) > width - self._overhead(console, shown) and droppable:
            shown.remove(droppable.pop(0))
        budget = width - self._overhead(console, shown)
        word, whole, line = ([spans[i][k] for i in shown] for k in range(3))
        if sum(line) <= budget:
            widths = line
        elif sum(whole) <= budget:
            widths = _widen(whole, line, budget)
        elif sum(word) <= budget:
            widths = _widen(word, line, budget)
        else:
            # A name longer than the terminal: folded onto more lines in the room the other
            # columns leave (their longest words kept: a number is never split), if that is some
            # room; else every column folds, in proportion.
            names = [k for k, i in enumerate(shown) if self.columns[i].min_width]
            rest = budget - sum(w for k, w in enumerate(word) if k not in names)
            if names and rest >= MIN_NAME_WIDTH * len(names):
                widths = list(word)
                for k, w in zip(names, _share(rest, [word[k] for k in names])):
                    widths[k] = w
            else:
                widths = _share(max(budget, len(shown)), word)
        out = copy.copy(self)
        out.columns = [replace(self.columns[i], width=w, _index=k) for k, (i, w) in enumerate(zip(shown, widths))]
        left_out = [str(self.columns[i].header) for i in range(len(self.columns)) if i not in shown]
        if left_out:
            note = f"not shown at this width: {', '.join(left_out)}"
            out.caption = f"{self.caption}\n{note}" if self.caption else note
        return out

    def _span(self, console: Console, options: ConsoleOptions, column: Column) -> tuple[int, int, int]:
        """Widths of a column's text: its longest word, what it keeps whole (its min_width, at
        least the longest word), its longest line. A no_wrap column keeps its lines whole."""
        cells = ([column.header] if self.show_header else []) + list(column.cells) \
            + ([column.footer] if self.show_footer else [])
        word = line = 1
        for cell in cells:
            m = Measurement.get(console, options, cell)
            word, line = max(word, m.minimum), max(line, m.maximum)
        if column.no_wrap:
            word = line
        elif column._index in self.cells_whole:  # each cell's line counts as one word
            word = max([word] + [Measurement.get(console, options, c).maximum for c in column.cells])
        whole = min(max(word, column.min_width or 0), max(word, line))
        return word, whole, max(whole, line)

    def _overhead(self, console: Console, shown: list[int]) -> int:
        """Borders and padding of a table of the ``shown`` columns: measured on an empty copy
        with one-character columns, so that it holds for any box and padding."""
        probe = copy.copy(self)
        probe.rows, probe.title, probe.caption = [], None, None
        probe.columns = [replace(self.columns[i], width=1, _index=k, _cells=[]) for k, i in enumerate(shown)]
        return Measurement.get(console, console.options.update_width(10_000), probe).maximum - len(shown)


def _widen(lo: list[int], hi: list[int], budget: int) -> list[int]:
    """From the narrowest widths, widen the columns that need least first: as many columns as
    can be shown on one line each are; the space left goes to the others, left to right."""
    widths, spare = list(lo), budget - sum(lo)
    order = sorted(range(len(lo)), key=lambda k: hi[k] - lo[k])
    for k in order:
        if hi[k] - lo[k] <= spare:
            spare -= hi[k] - lo[k]
            widths[k] = hi[k]
    for k in range(len(lo)):
        give = min(spare, hi[k] - widths[k])
        widths[k] += give
        spare -= give
    return widths


def _share(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights``, at least 1 each, summing to ``total``
    (when ``total`` is at least the number of weights)."""
    out = [max(1, total * w // max(1, sum(weights))) for w in weights]
    k = 0
    while sum(out) < total:
        out[k % len(out)] += 1
        k += 1
    while sum(out) > total and max(out) > 1:
        out[out.index(max(out))] -= 1
    return out


def layer_table(stats: dict, structure: dict | None = None, title: str = "Remaining parameters per layer") -> Table:
    """A rich table of per-layer sparsity from ``pruning.sparsity_stats``, and where the run's
    ``structure`` is given (``run.structure``), the units each layer's weight keeps once the
    network is compacted. It fits the console it is printed in: layer names (with their "(not
    pruned)") are never cut or wrapped; at narrow widths the columns that can be worked out from
    the others (compression, non-zero count) give way first."""
    t = FitTable(title=title)
    cells = [r["name"] + ("" if r["prunable"] else " (not pruned)") for r in stats["layers"]]
    units = (structure or {}).get("units") or {} if isinstance(structure, dict) else {}
    longest = max(map(len, cells), default=0)
    for col, justify, drop in (("layer", "left", None), ("shape", "left", 2), ("params", "right", 4),
                               ("nonzero", "right", 1), ("remaining", "right", None),
                               ("compression", "right", 0), ("FLOPs left", "right", 3)):
        t.add_column(col, justify=justify, drop=drop, min_width=longest if col == "layer" else None)
    if units:
        t.add_column("units kept", justify="right", drop=5)
    for r, cell in zip(stats["layers"], cells):
        flops = f"{100 * r['flops_remaining'] / r['flops_dense']:.2f}%" if r["flops_dense"] else "-"
        layer, _, kind = r["name"].rpartition(".")
        kept = units.get(layer) if kind == "weight" else None
        t.add_row(cell, "x".join(map(str, r["shape"])),
                  f"{r['params']:,}", f"{r['nonzero']:,}", f"{r['remaining_pct']:.2f}%",
                  f"{r['compression']:.1f}x", flops, *([f"{kept[0]}/{kept[1]}" if kept else ""] if units else []))
    for label, key in (("prunable", "prunable"), ("all parameters", "all")):
        tot = stats[key]
        t.add_row(f"[bold]{label}[/bold]", "", f"{tot['params']:,}", f"{tot['nonzero']:,}",
                  f"{tot['remaining_pct']:.2f}%", f"{tot['compression']:.1f}x",
                  f"{stats['flops']['remaining_pct']:.2f}%" if key == "all" else "", *([""] if units else []))
    return t


def render_text(renderable, width: int = PIPED_WIDTH) -> str:
    """A rich renderable as plain text, for log files (80 columns, as a terminal)."""
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, force_terminal=False).print(renderable)
    return buf.getvalue()
