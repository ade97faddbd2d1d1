#!/usr/bin/env python
"""A tuning study's runs as one Markdown table of validation figures (never the test set).

One row per finished run folder found below the given paths: the sensitivity settings that
differ between studies (variant, reduction, scale, threshold scope, λ, seed), the final
validation error, remaining % and compression of the prunable parameters, the remaining % of
each weight tensor, and the insensitivity figures of the last epoch (mean insensitivity of the
kept regularized weights, share below 0.5). Test figures are left out on purpose: choices are
made on these.

    python scripts/study_table.py outputs/study/l300            # every run below
    python scripts/study_table.py outputs/study/l300 --sort val  # most accurate first
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml


def runs_below(paths: list[str]) -> list[Path]:
    found = []
    for p in map(Path, paths):
        found += [s.parent for s in sorted(p.rglob("summary.json"))]
    return found


def row(run: Path, root: Path) -> dict | None:
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("status") != "completed":
        return None
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    sens, prune = cfg["sens"], cfg["prune"]
    with open(run / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    scale = sens.get("scale", "none")
    scale = {"gamma": f"γ {sens.get('gamma'):g}", "max": f"max/{sens.get('scale_over', 'tensor')}"}.get(scale, scale)
    weights = [layer for layer in summary["sparsity"]["layers"] if layer["prunable"] and len(layer["shape"]) > 1]
    insens = last.get("insens_mean") or ""
    below = last.get("insens_below_half") or ""
    return {
        "run": str(run.relative_to(root)) if run != root else run.name, "sens": sens["name"],
        "reduction": sens.get("reduction", "batch") if sens["name"] in ("spec", "unspec", "loss") else "",
        "scale": scale if sens["name"] in ("spec", "unspec", "loss") else "",
        "scope": prune.get("scope", "global"), "lam": sens["lam"], "seed": cfg["trainer"]["seed"],
        "epochs": summary["epochs_completed"], "val": 100 * summary["val_error"],
        "remaining": summary["remaining_pct"], "compression": summary["compression"],
        "layers": ", ".join(f"{w['name'].removesuffix('.weight')} {w['remaining_pct']:.2g}" for w in weights),
        "insens": f"{float(insens):.3f}" if insens else "",
        "below": f"{100 * float(below):.1f} %" if below else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--sort", default="run", choices=["run", "val", "remaining"])
    args = ap.parse_args()
    root = Path(args.paths[0])
    rows = [r for r in (row(run, root) for run in runs_below(args.paths)) if r is not None]
    rows.sort(key=lambda r: r[args.sort])
    out = sys.stdout
    out.write("| run | sens | reduction | scale | scope | λ | seed | epochs | val error | remaining | compression "
              "| remaining % per weight tensor | insensitivity (last epoch) | below 0.5 |\n")
    out.write("|" + " --- |" * 14 + "\n")
    for r in rows:
        out.write(f"| {r['run']} | {r['sens']} | {r['reduction']} | {r['scale']} | {r['scope']} | {r['lam']:g} "
                  f"| {r['seed']} | {r['epochs']} | {r['val']:.2f} % | {r['remaining']:.2f} % "
                  f"| {r['compression']:.0f}× | {r['layers']} | {r['insens']} | {r['below']} |\n")


if __name__ == "__main__":
    main()
