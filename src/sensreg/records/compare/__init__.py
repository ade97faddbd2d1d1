"""Reading many run folders back: discovery, robust records, filter, sort, group, Pareto front.

``compare(paths, ...)`` is what ``sensreg compare`` runs: it finds every run folder below the
given paths (single runs, sweeps, whole ``outputs/`` trees), reads each into a ``Row`` without
trusting it (a corrupt or half-written ``summary.json`` is skipped and reported, never a crash),
keeps the rows that match ``--where``, optionally folds the seeds of one configuration into one
row (runs sharing a ``config_hash``), marks the Pareto-optimal rows and writes ``compare.csv``,
``compare.md`` and one plot per network and dataset. matplotlib is imported only when a plot is
drawn (``records/plots.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path




# Its parts, one module each: runs.py (finding and reading run folders), select.py
# (filter, sort, group, Pareto), output.py (table, files, plots), references.py (published
# figures). What other code and the tests use is named here too.
from sensreg.records.compare.output import columns, rich_table, write_csv, write_markdown, write_plots
from sensreg.records.compare.references import references_for
from sensreg.records.compare.runs import (CSV_NAME, DEFAULT_SORT, HYDRA_RECORD, KEYS, MD_NAME, CompareError, Row,
                                     Skipped, expand_paths, find_run_dirs, read_preset, read_runs)
from sensreg.records.compare.select import (NOT_CONFIGURATION, filter_rows, group_rows, mark_pareto,
                                       mark_study_fronts, name_groups, parse_where, sort_rows)

__all__ = ["compare", "Comparison", "CompareError", "Row", "Skipped", "KEYS", "DEFAULT_SORT", "HYDRA_RECORD",
           "NOT_CONFIGURATION", "columns", "rich_table", "write_plots", "references_for", "find_run_dirs",
           "read_preset", "read_runs", "filter_rows", "group_rows", "mark_pareto", "name_groups", "parse_where",
           "sort_rows"]

# --- the whole command -------------------------------------------------------------------------

@dataclass
class Comparison:
    rows: list[Row]
    skipped: list[Skipped]
    grouped: bool
    out_dir: Path
    files: list[Path]
    warnings: list[str] = field(default_factory=list)  # one line each, for stderr


def compare(paths: list[str], *, where: Iterable[str] = (), sort: str | None = None, group: bool = False,
            out: str | Path | None = None, plots: bool = True) -> Comparison:
    """Find, read, filter, group, sort and mark the runs below ``paths``; write the files.

    The files go to ``out`` or, by default, to the first folder given. Raises CompareError for
    user mistakes (missing paths, no runs, unknown keys), checked before anything is written.
    """
    where = list(where)
    roots = expand_paths(paths)
    for w in where:
        parse_where(w)  # reject a bad --where or --sort before the (possibly long) walk
    sort_rows([], sort)
    unreachable: list[Skipped] = []
    run_dirs = find_run_dirs(roots, unreachable)
    if not run_dirs:
        raise CompareError(f"no run folders below {', '.join(map(str, roots))} (a run folder holds a "
                           f"summary.json); point sensreg compare at outputs/ or at a sweep folder.")
    base = Path(os.path.commonpath([str(r.resolve()) for r in roots]))
    rows, skipped = read_runs(run_dirs, base)
    skipped = unreachable + skipped
    if not rows:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        raise CompareError(f"none of the {len(skipped)} run folder(s) below {', '.join(map(str, roots))} "
                           f"could be read ({reasons}), so there is nothing to compare and nothing was "
                           f"written; fix or remove those folders, or point sensreg compare elsewhere.")
    # Marked before the filter, so that --where pareto=true and --where front=true select by
    # them (Pareto-optimal among every run found); the stars are then drawn again among the
    # rows shown.
    mark_pareto(rows)
    mark_study_fronts(rows)
    if where:
        kept = filter_rows(rows, where)
        if rows and not kept:
            raise CompareError(f"none of the {len(rows)} runs found matches {' and '.join(where)}; "
                               f"loosen the --where filter (keys: {', '.join(KEYS)}).")
        rows = kept
    warnings: list[str] = []
    if group:
        rows = group_rows(rows, warnings)
    mark_pareto(rows)
    rows = sort_rows(rows, sort)
    out_dir = Path(out) if out is not None else roots[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_plots(rows, out_dir) if plots else []
    write_csv(rows, out_dir / CSV_NAME)
    write_markdown(rows, skipped, out_dir / MD_NAME, grouped=group, inputs=roots, plots=files, wheres=where)
    return Comparison(rows, skipped, group, out_dir, [out_dir / CSV_NAME, out_dir / MD_NAME, *files], warnings)
