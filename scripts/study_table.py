#!/usr/bin/env python
"""A tuning study's runs as one Markdown table of validation figures (never the test set).

One row per finished run folder found below the given paths: the sensitivity settings that
differ between studies (variant, reduction, scale, threshold scope, λ, seed), the final
validation error, remaining % and compression of the prunable parameters, the remaining % of
each weight tensor, the share of Σ|w| its prunings cut (compounded: prune_schedules.l1_removed_in_all),
and the insensitivity figures of the last epoch (mean insensitivity of the
kept regularized weights, share below 0.5). Test figures are left out on purpose: choices are
made on these.

    python scripts/study_table.py outputs/study/l300            # every run below
    python scripts/study_table.py outputs/study/l300 --sort val  # most accurate first
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from sensreg.method.prune_schedules import l1_removed_in_all
from sensreg.records.config_keys import upgrade_config
from sensreg.records.folder import SUMMARY_NAME, RunFolder
from sensreg.records.tables import markdown_table


def runs_below(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        found += [s.parent for s in sorted(p.rglob(SUMMARY_NAME))]
    return found


def row(run: Path, root: Path) -> dict | None:
    run = run.absolute()
    record = RunFolder(run).read()
    if record.status != "completed":
        return None
    summary, cfg, last = record.summary, upgrade_config(record.config), record.metrics[-1]
    sens, prune = cfg["sens"], cfg["prune"]
    scale = sens["scale"]
    scale = {"gamma": f"γ {sens['gamma']:g}", "max": f"max/{sens['scale_over']}"}.get(scale, scale)
    weights = [layer for layer in summary["sparsity"]["layers"] if layer["prunable"] and len(layer["shape"]) > 1]
    insens, below = last.get("insens_mean", math.nan), last.get("insens_below_half", math.nan)
    l1_cut = l1_removed_in_all(summary.get("thresholds", []))
    return {
        "run": str(run.relative_to(root)) if run != root else run.name, "sens": sens["name"],
        "reduction": sens["reduction"] if sens["name"] in ("spec", "unspec", "loss") else "",
        "scale": scale if sens["name"] in ("spec", "unspec", "loss") else "",
        "scope": prune["scope"], "lam": sens["lam"], "seed": cfg["trainer"]["seed"],
        "epochs": summary["epochs_completed"], "val": 100 * summary["val_error"],
        "remaining": summary["remaining_pct"], "compression": summary["compression"],
        "layers": ", ".join(f"{w['name'].removesuffix('.weight')} {w['remaining_pct']:.2g}" for w in weights),
        "insens": "" if math.isnan(insens) else f"{insens:.3f}",
        "below": "" if math.isnan(below) else f"{100 * below:.1f} %",
        "l1_cut": "" if l1_cut is None else f"{l1_cut:.3g} %",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--sort", default="run", choices=["run", "val", "remaining"])
    args = ap.parse_args()
    # Runs are named by their path below the folder the given paths have in common.
    root = Path(os.path.commonpath([os.path.abspath(p) for p in args.paths]))
    rows = [r for r in (row(run, root) for run in runs_below(args.paths)) if r is not None]
    rows.sort(key=lambda r: r[args.sort])
    header = ["run", "sens", "reduction", "scale", "scope", "λ", "seed", "epochs", "val error", "remaining",
              "compression", "Σ|w| cut", "remaining % per weight tensor", "insensitivity (last epoch)", "below 0.5"]
    cells = [[r["run"], r["sens"], r["reduction"], r["scale"], r["scope"], f"{r['lam']:g}", str(r["seed"]),
              str(r["epochs"]), f"{r['val']:.2f} %", f"{r['remaining']:.2f} %", f"{r['compression']:.0f}×",
              r["l1_cut"], r["layers"], r["insens"], r["below"]] for r in rows]
    sys.stdout.write("\n".join(markdown_table(header, cells)) + "\n")


if __name__ == "__main__":
    main()
