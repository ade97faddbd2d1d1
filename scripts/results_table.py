"""The README's Results table: one row per reference preset, mean ± std over its seeds.

Reads ``<root>/<preset>/seed*/summary.json`` (completed runs only) and prints a Markdown table:
the epochs trained, test error, remaining % and compression ratio of the prunable parameters, the
compacted network (its parameters, and how many times fewer multiply-adds it needs than the dense
network: summary.json's ``structure``), the size of the compact model.pt, and the remaining % of
every weight tensor; then the published figures for the same networks from sensreg's
references.yaml.

    python scripts/results_table.py outputs/reference > outputs/reference/results.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from sensreg.records.compare import references_for
from sensreg.records.folder import RunFolder
from sensreg.records.structure import ratio
from sensreg.records.tables import markdown_table


def mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def two_digits(v: float) -> str:
    """Two significant digits, without an exponent for 100 %."""
    return f"{v:.0f}" if v >= 99.5 else f"{v:.2g}"


def preset_row(name: str, summaries: list[dict]) -> list[str]:
    layers: dict[str, list[float]] = {}
    for s in summaries:
        for layer in s["sparsity"]["layers"]:
            if layer["prunable"] and layer["name"].endswith("weight"):
                layers.setdefault(layer["name"].removesuffix(".weight"), []).append(layer["remaining_pct"])
    per_layer = ", ".join(f"{n} {two_digits(statistics.mean(v))}" for n, v in layers.items())
    kib = [s["checkpoint_bytes"] / 1024 for s in summaries if "checkpoint_bytes" in s]
    epochs = sorted({s["epochs_completed"] for s in summaries})
    compact = [s["structure"]["params"]["compact"] for s in summaries if ratio(s.get("structure"), "params")]
    fewer_macs = [ratio(s.get("structure"), "macs") for s in summaries if ratio(s.get("structure"), "macs")]
    return [f"`{name}`", str(len(summaries)), "/".join(map(str, epochs)),
            mean_std([100 * s["test_error"] for s in summaries], 2),
            mean_std([s["remaining_pct"] for s in summaries], 2),
            mean_std([s["compression"] for s in summaries], 0) + "×",
            f"{statistics.mean(compact) / 1000:.0f}k" if compact else "",
            mean_std(fewer_macs, 1) + "×" if fewer_macs else "",
            f"{statistics.mean(kib):.0f}" if kib else "",
            per_layer]


def is_dense(config: dict) -> bool:
    """A run with no regularizer and no pruning: the network as trained plainly."""
    return (config.get("sens") or {}).get("name") == "none" and (config.get("prune") or {}).get("name") == "none"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(markdown_table(header, rows)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", default="outputs/reference", type=Path)
    root = parser.parse_args().root
    found, models = [], []
    for preset in sorted(p for p in root.iterdir() if p.is_dir()):
        summaries, dense = [], False
        for run in sorted(p for p in preset.glob("seed*") if p.is_dir()):
            record = RunFolder(run).read()
            if record.status == "completed":
                summaries.append(record.summary)
                dense = is_dense(record.config)
        if not summaries:
            print(f"{preset}: no completed run, left out", file=sys.stderr)
            continue
        key = (summaries[0]["model"], summaries[0]["data"])
        # Each network's dense run first: what its pruned runs' errors are measured against.
        found.append((key, not dense, preset.name, preset_row(preset.name, summaries)))
        models += [key] if key not in models else []
    rows = [row for *_, row in sorted(found, key=lambda f: (models.index(f[0]), f[1], f[2]))]
    print(markdown(["runs", "seeds", "epochs", "test error %", "remaining %", "compression", "compacted params",
                    "fewer MACs", "model.pt KiB", "remaining % per weight tensor"], rows))
    published = [[f"{r['method']} ({r['model']}, {r['data']})", f"{r['test_error_pct']:.2f}",
                  f"{100 / r['compression']:.2f}", f"{r['compression']:.0f}×", r["budget"] or "not stated"]
                 for m, d in models for r in references_for(m, d)]
    if published:
        print("Published (budgets: src/sensreg/references.yaml, with sources):\n")
        print(markdown(["method", "test error %", "remaining %", "compression", "budget"], published))


if __name__ == "__main__":
    main()
