"""What compare writes: the console table, compare.csv, compare.md and one plot per network and
dataset (matplotlib is imported only when a plot is drawn, ``records/plots.py``)."""

from __future__ import annotations

import csv
import re
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.cells import cell_len
from rich.text import Text

from sensreg.atomic import write_atomic
from sensreg.records.folder import relative_below
from sensreg.records.tables import FitTable, markdown_table

from sensreg.records.compare.references import load_references, references_for
from sensreg.records.compare.runs import Row, Skipped

# --- output: rich table, CSV, Markdown, plots --------------------------------------------------

def _fmt_num(v: float | None, kind: str = "g") -> str:
    if v is None:
        return "-"
    if kind == "pct":  # two decimals, but three significant digits below 1 % (0.357 % remaining)
        return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"
    if kind == "x":
        return f"{v:.1f}×"
    if kind == "count":
        return _fmt_count(round(v))
    if kind == "s":
        return f"{v:.1f} s" if v < 10 else f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"
    return f"{v:.3g}"


def _fmt_count(v: int | None) -> str:
    """A count in short form: 540k, 3.2M."""
    if v is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= size:
            return f"{v / size:.3g}{unit}"
    return str(v)


def _fmt_lam(v: float | None) -> str:
    """λ in short scientific notation (1e-4, 2.5e-4): sweeps step it by decades."""
    if v is None:
        return "-"
    if v == 0 or 1e-2 <= abs(v) < 1e3:
        return f"{v:g}"
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _cell(row: Row, attr: str, kind: str) -> str:
    text = _fmt_num(getattr(row, attr), kind)
    if attr in row.std:
        std = row.std[attr]
        # The spread with as many decimals as the mean (2.20 ± 0.20), never rounded to 0.
        spread = (f"{std:.2f}" if std >= 0.01 or std == 0 else f"{std:.1g}") if kind == "pct" else \
            _fmt_num(std, kind).rstrip("×")
        text += f" ± {spread}"
    return text


def _epochs(row: Row) -> str:
    if row.epochs is None:
        return "-"
    if row.epochs_done is not None and row.epochs_done < row.epochs:
        return f"{row.epochs_done}/{row.epochs}"
    return str(row.epochs)


PARETO_MARK = "★"
FRONT_MARK = "◆"
TEXT_COLUMNS = ("run", "config", "model", "data", "sens", "prune", "status")  # left-aligned; the rest are numbers


def columns(grouped: bool) -> list[tuple[str, Callable[[Row], str]]]:
    """(header, cell) pairs of the table, the same for the terminal and compare.md."""
    cols: list[tuple[str, Callable[[Row], str]]] = [
        ("", lambda r: (PARETO_MARK if r.pareto else "") + (FRONT_MARK if r.study_front else "")),
        ("config" if grouped else "run", lambda r: r.run),
        ("model", lambda r: r.model or "-"), ("data", lambda r: r.data or "-"),
        ("sens", lambda r: r.sens or "-"), ("λ", lambda r: _fmt_lam(r.lam)),
        ("η", lambda r: _fmt_num(r.eta, "g")), ("prune", lambda r: r.prune or "-"), ("epochs", _epochs),
        ("samples", lambda r: _fmt_count(r.samples)),
        ("seeds" if grouped else "seed", lambda r: r.seed or "-"),
    ]
    if grouped:
        cols.append(("n", lambda r: str(r.n)))
    cols += [
        ("test err %", lambda r: _cell(r, "test_error_pct", "pct")),
        ("remaining %", lambda r: _cell(r, "remaining_pct", "pct")),
        ("compression", lambda r: _cell(r, "compression", "x")),
        ("compact params", lambda r: _cell(r, "params_compact", "count")),
        ("MACs ×", lambda r: _cell(r, "macs_x", "x")),
        ("wall time", lambda r: _cell(r, "wall_time_s", "s")),
        ("status", lambda r: r.status),
    ]
    return cols


# The columns the terminal shows without --wide: what a run came to and what it cost. Where even
# these do not fit, those with a number give way, lowest first: compression first, as it is
# 100 / remaining, then how many times fewer multiply-adds the compacted network needs; the name,
# test error and remaining parameters never do.
NARROW = {"": None, "run": None, "config": None, "test err %": None, "remaining %": None,
          "compression": 0, "MACs ×": 1, "epochs": 3, "n": 2, "status": 4}


def rich_table(rows: list[Row], grouped: bool = False, title: str | None = None, wide: bool = False) -> FitTable:
    """The comparison as a rich table that fits the console it is printed in; Pareto-optimal rows
    are starred and bold. By default only the NARROW columns (and the status only where a run is
    not completed); ``wide``: every column, as in compare.md."""
    caption = (f"{PARETO_MARK} Pareto-optimal: no run of the same network and data has both fewer remaining "
               f"parameters and a lower test error")
    if any(r.study_front for r in rows):
        caption += f"\n{FRONT_MARK} on the front its sweep's study found (validation error against remaining)"
    cols = columns(grouped)
    if not wide:
        unfinished = any(r.status != "completed" for r in rows)
        cols = sorted(((h, cell) for h, cell in cols if h in NARROW and (h != "status" or unfinished)),
                      key=lambda col: list(NARROW).index(col[0]))
    t = FitTable(title=title, caption=caption)
    for header, _ in cols:
        name = header in ("run", "config")
        # A name is never wrapped or cut: its column is as wide as the longest one.
        # A figure with its spread (1.75 ± 0.06) stays on one line: columns give way first.
        t.add_column(header, justify="left" if header in TEXT_COLUMNS else "right",
                     min_width=max((cell_len(r.run) for r in rows), default=0) if name else None,
                     cells_whole=header not in TEXT_COLUMNS, drop=None if wide else NARROW[header])
    for r in rows:
        style = "bold" if r.pareto else ("dim" if r.status not in ("completed",) and r.n == 0 else None)
        t.add_row(*(Text(cell(r)) for _, cell in cols), style=style)  # Text: a name is not markup
    return t


CSV_COLUMNS = ("run", "status", "model", "data", "sens", "lam", "eta", "epochs", "epochs_done", "seed", "n",
               "test_error_pct", "test_error_pct_std", "remaining_pct", "remaining_pct_std",
               "compression", "compression_std", "params_compact", "params_compact_std", "macs_compact",
               "macs_compact_std", "macs_x", "macs_x_std", "wall_time_s", "wall_time_s_std", "prune", "samples", "config_hash",
               "pareto", "study_front", "path")


def write_csv(rows: list[Row], path: Path) -> None:
    """compare.csv: one line per row of the table, numbers at full precision, empty = missing.

    Run folders below the csv's own folder are given relative to it, so that the file stays
    right where the folder is moved or checked out (the committed reference results)."""
    def write(f) -> None:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for r in rows:
            values = {**vars(r), **{f"{k}_std": v for k, v in r.std.items()},
                      "path": ";".join(relative_below(p, Path(path).parent.resolve()) for p in r.path.split(";"))}
            w.writerow(["" if values.get(c) is None else repr(values[c]) if isinstance(values[c], float)
                        else values[c] for c in CSV_COLUMNS])
    write_atomic(path, write)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def write_markdown(rows: list[Row], skipped: list[Skipped], path: Path, *, grouped: bool,
                   inputs: list[Path], plots: list[Path], wheres: Iterable[str] = ()) -> None:
    """compare.md: the table, the plots, the skipped folders and the sources of the references."""
    cols = columns(grouped)
    lines = ["# sensreg compare", "",
             f"Runs below {', '.join(f'`{p}`' for p in inputs)}, {time.strftime('%Y-%m-%d %H:%M')}"
             + (f"; filtered by {', '.join(f'`{w}`' for w in wheres)}" if wheres else "")
             + (". One row per configuration (runs sharing a config hash): mean ± sample std over "
                "the n seeds that finished." if grouped else "."), "",
             f"{PARETO_MARK} = Pareto-optimal: no other run of the same network and dataset has both "
             "fewer-or-equal remaining parameters and a lower-or-equal test error. Test error and "
             "remaining parameters (of the prunable tensors) in percent.", ""]
    if any(r.study_front for r in rows):
        lines += [f"{FRONT_MARK} = on the front its sweep's study found (hydra/sweeper=pareto: validation "
                  "error against remaining parameters; study.json).", ""]
    header = [h or "Pareto" for h, _ in cols]
    lines += markdown_table(header, [[_md_escape(cell(r)) for _, cell in cols] for r in rows],
                            right=[h for h in header if h not in TEXT_COLUMNS])
    if plots:
        lines += ["", "## Test error against remaining parameters and compacted multiply-adds", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
    if skipped:
        lines += ["", "## Skipped folders", ""]
        lines += [f"- `{s.path}`: {s.reason}" for s in skipped]
    shown = {(r.model, r.data) for r in rows}
    refs = [ref for ref in load_references() if (ref["model"], ref["data"]) in shown]
    if refs:
        lines += ["", "## Published reference points", ""]
        lines += markdown_table(
            ["network", "data", "method", "compression", "remaining %", "test err %", "budget", "source"],
            [[r["model"], r["data"], r["method"], f"{r['compression']}×", f"{r['remaining_pct']:.3g}",
              str(r["test_error_pct"]), _reference_budget(r), _cite(r["source"])] for r in refs],
            right=["compression", "remaining %", "test err %"])
    write_atomic(path, lambda f: f.write("\n".join(lines) + "\n"))


def _cite(source: dict) -> str:
    return f"{source['authors']}, *{source['title']}*, {source['venue']} ({source['url']})"


def _reference_budget(ref: dict) -> str:
    if not ref["budget"]:
        return "not stated"
    return ref["budget"] + (f" ({ref['budget_source']['url']})" if ref["budget_source"] else "")


MAX_LABELLED = 30  # points per plot up to which each is labelled with its λ (etc.)


# The x axes compare plots error against: (Row attribute, file name suffix, axis label, title words).
PLOT_AXES = (("remaining_pct", "", "remaining parameters (% of prunable, log scale)", "remaining parameters"),
             ("macs_pct", "_macs", "multiply-adds of the compacted network (% of the dense network's, log scale)",
              "compacted multiply-adds"))


def write_plots(rows: list[Row], out_dir: Path) -> list[Path]:
    """Per (network, dataset) with results: test error against remaining parameters, and
    against the compacted network's multiply-adds where the runs record them (``_macs``)."""
    from sensreg.records.plots import pareto_plot  # matplotlib only when a plot is drawn

    written = []
    for attr, suffix, xlabel, what in PLOT_AXES:
        pairs: dict[tuple, list[Row]] = {}
        for r in rows:
            if r.test_error_pct is not None and getattr(r, attr) is not None:
                pairs.setdefault((r.model, r.data), []).append(r)
        for (model, data), members in pairs.items():
            # Dense runs (no regularizer, no pruning) are a band, not a point at 100 %: the
            # error every pruned point is measured against, with its budget.
            dense = [r for r in members if r.sens == "none" and r.prune == "none"]
            members = [r for r in members if r not in dense]
            if not members:
                continue
            path = out_dir / f"compare_{_safe(model)}_{_safe(data)}{suffix}.png"
            seeds = " (mean ± std over seeds)" if any(r.n > 1 for r in members) else ""
            pareto_plot(_series(members, attr), references_for(model, data) if not suffix else [], path,
                        title=f"{model} on {data}: test error vs {what}{seeds}", dense=dense_bands(dense),
                        xlabel=xlabel)
            written.append(path)
    return written


def _series(members: list[Row], attr: str) -> dict[str, list[dict]]:
    """The points of one plot, one series per variant; x is the row's ``attr``."""
    # Points are labelled with the settings that differ between them (a λ sweep: λ), as long
    # as there are few enough points for the labels to stay readable.
    varying = [(sym, a, fmt) for sym, a, fmt in (("λ", "lam", _fmt_lam), ("η", "eta", _fmt_num),
                                                 ("epochs", "epochs", _fmt_num))
               if len({getattr(r, a) for r in members}) > 1] if len(members) <= MAX_LABELLED else []
    # The budget a point's marker stands for: the samples seen where every run of the plot
    # records them, else the epochs (runs saved before budgets were recorded have only those;
    # on one network and dataset the two say the same).
    in_samples = all(r.samples for r in members)
    series: dict[str, list[dict]] = {}
    for r in members:
        # One series per variant; a schedule other than the threshold search is part of its name.
        name = (r.sens or "?") + (f" prune={r.prune}" if r.prune not in (None, "search") else "")
        series.setdefault(name, []).append({
            "x": getattr(r, attr), "y": r.test_error_pct,
            "budget": f"{_fmt_count(r.samples)} samples" if in_samples
                      else f"{_fmt_num(r.epochs)} epochs" if r.epochs else None,
            "xerr": r.std.get(attr), "yerr": r.std.get("test_error_pct"),
            "label": " ".join(f"{sym}={fmt(getattr(r, a))}" for sym, a, fmt in varying)})
    return series


def dense_bands(rows: list[Row]) -> list[dict]:
    """The test error of dense runs per budget, as mean and spread over their seeds (a grouped
    row brings its own mean and std): what pruning costs is read against it."""
    by_budget: dict[str, list[Row]] = {}
    for r in rows:
        by_budget.setdefault(f"{_fmt_num(r.epochs)} epochs" if r.epochs else "budget unknown", []).append(r)
    bands = []
    for budget, group in by_budget.items():
        if len(group) == 1:
            y, spread, n = group[0].test_error_pct, group[0].std.get("test_error_pct") or 0.0, group[0].n
        else:
            values = [r.test_error_pct for r in group]
            y, spread, n = statistics.mean(values), statistics.stdev(values), len(values)
        bands.append({"y": y, "spread": spread, "label": f"dense, {budget}: {y:.2f} ± {spread:.2f} % ({n} seeds)"})
    return bands


def _safe(name: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name or "unknown")


