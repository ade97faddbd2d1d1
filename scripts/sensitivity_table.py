#!/usr/bin/env python
"""What the sensitivity buys, in one table: the compression of spec (and of the neuron variant)
against the l2 control, magnitude pruning and the structured baseline, at equal validation error,
seed by seed.

Runs: every folder below the roots whose summary.json says ``completed``. Two subject methods,
each set against three baselines (in the text below, "spec" stands for either subject):

- spec: ``sens=spec`` with the batch reduction and no scale (the paper's method; the study's
  other reductions and scales are left out, so that one curve is one method);
- neuron: ``sens=neuron`` (SeReNe's sensitivity of whole units), any scale (shown in its setting);
- l2: ``sens=l2``, the same shrink with the insensitivity fixed at 1;
- gmp: ``sens=none prune=gmp``, magnitude pruning with no regularizer;
- gmp_units: ``sens=none prune=gmp_units``, magnitude pruning of whole units (the structured baseline).

Runs with per-layer thresholds (``prune.scope=layer``) are left out of every method, for the same
reason; unspec, loss and dense runs are not compared.

The comparison. Runs are grouped by network (model, dataset), training budget (epochs completed)
and seed. Within a group, a baseline's runs (its λ, targets, schedules) are points (validation
error, compression) of one curve (for l2, one per prune schedule: the spec run's own): sorted by validation error, log(compression) linear between
neighbours, the more compressed point kept where two share a validation error. Each spec run is
set against the curve of the same seed at the spec run's own validation error, inside the curve's
range only; a curve of a single point compares only at exactly its error. The ratio is spec's
compression over the baseline's there (above 1: spec keeps fewer weights at the same validation
error), and the baseline's test error is interpolated the same way (linear in validation error).
Where no ratio exists (spec more accurate, or less, than every point of the curve; a one-point
curve), the comparison falls back to equal compression: the baseline's validation error at spec's
compression (log compression linear between neighbours, inside the curve's range, or exactly a
point: gmp runs at spec's own target), minus spec's. Where neither exists, the points are only
ordered: spec's run dominates the baseline's curve of its seed where some baseline point is no more
accurate and no more compressed (and differs), is dominated where some point is both at least as
accurate and as compressed, and is neither otherwise. Per spec setting the table gives the mean ±
sample std of each over the seeds where it could be computed, and how many; below it a verdict per
network and budget: spec wins where the ratio exceeds 1 (or the gap 0) by more than its std, loses
where it falls short by more, ties otherwise.

The measure. By default compression (|θ| / |θ ≠ 0|, a count of zeros). ``--measure macs`` or
``--measure params`` sets the runs against each other by what the pruned network costs to run
instead: how many times fewer multiply-adds, or parameters, the compacted network needs than the
dense one (summary.json's ``structure``: every unit that cannot change the output removed; runs
without it are left out, with a note). Everything above holds with that ratio in the place of
compression.

    python scripts/sensitivity_table.py                          # outputs/reference outputs/study
    python scripts/sensitivity_table.py outputs/reproduce        # any folders holding run folders
    python scripts/sensitivity_table.py --measure macs outputs/reference outputs/study/dense5_60
"""

from __future__ import annotations

import argparse
import bisect
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from sensreg.method.prune_schedules import target_sparsity
from sensreg.records.config_keys import upgrade_config
from sensreg.records.folder import SUMMARY_NAME, RunFolder
from sensreg.records.structure import ratio
from sensreg.records.tables import markdown_table

SUBJECTS = ("spec", "neuron")  # the sensitivity methods set against the baselines
BASELINES = ("l2", "gmp", "gmp_units")
# What a run's "compression" is, by --measure: its summary's figure, and its name in the table.
MEASURES = {
    "compression": (lambda s: s.get("compression"), "compression", "compression"),
    "macs": (lambda s: ratio(s.get("structure"), "macs"), "fewer MACs", "cost in multiply-adds"),
    "params": (lambda s: ratio(s.get("structure"), "params"), "fewer params", "compacted size"),
}
OUTCOMES = ("wins", "ties", "loses", "is ahead on a single seed", "is level on a single seed",
            "is behind on a single seed")


@dataclass
class Run:
    path: Path
    network: str  # "model/dataset"
    budget: int  # epochs completed
    seed: int
    method: str  # a subject (spec, neuron) or a baseline (l2, gmp, gmp_units)
    schedule: str  # prune.name: an l2 curve is compared with spec runs of the same schedule
    setting: dict  # what tells one spec setting from another: {field: shown value}
    val: float
    test: float
    compression: float  # the measure compared (--measure): compression, or a compacted cost ratio


def method_of(cfg: dict) -> str | None:
    sens, prune = cfg.get("sens") or {}, cfg.get("prune") or {}
    if prune.get("scope") != "global":
        return None
    if sens.get("name") == "spec" and sens.get("reduction") == "batch" and sens.get("scale") == "none":
        return "spec"
    if sens.get("name") in ("neuron", "l2"):
        return sens["name"]
    if sens.get("name") == "none" and prune.get("name") in ("gmp", "gmp_units"):
        return prune["name"]
    return None


def setting_of(cfg: dict) -> dict:
    """λ and the pruning, and what else may tell two spec settings of one budget apart."""
    sens, prune, eta = cfg.get("sens") or {}, cfg.get("prune") or {}, cfg.get("eta_schedule") or {}
    pruning = prune.get("name", "?")
    if pruning in ("gmp", "gmp_units"):
        pruning += f" {1 / (1 - target_sparsity(prune['target'])):.3g}×"
    elif pruning == "fixed":
        pruning += f" {prune.get('threshold'):g}"
    stop, milestones = prune.get("stop_epoch"), eta.get("milestones") or []
    return {"λ": f"λ {sens.get('lam', 0):.2g}", "pruning": pruning,
            "stop": f"until epoch {stop}" if stop is not None else "",
            "tolerance": f"tolerance {prune.get('tolerance'):.2g}" if pruning == "search" else "",
            "eta": f"η ÷10 at {', '.join(map(str, milestones))}" if eta.get("name") == "step"
            else f"η {eta.get('name', '?')}",
            "scale": f"S scaled: {sens['scale']}" if sens.get("scale", "none") != "none" else ""}


def find_runs(roots: list[str], measure: str = "compression") -> list[Run]:
    runs, seen, unmeasured = [], {}, 0
    figure = MEASURES[measure][0]
    for root in roots:
        for summary_path in sorted(Path(root).rglob(SUMMARY_NAME)):
            record = RunFolder(summary_path.parent).read()
            s, cfg = record.summary or {}, upgrade_config(record.config)
            method = method_of(cfg)
            if record.status != "completed" or method is None:
                continue
            budget = s.get("epochs_completed") or (cfg.get("budget") or {}).get("epochs")
            if not budget:
                continue
            model = s.get("model") or (cfg.get("model") or {}).get("name")
            data = s.get("data") or (cfg.get("data") or {}).get("name")
            seed = s.get("seed", (cfg.get("trainer") or {}).get("seed"))
            value = figure(s)
            if value is None:
                unmeasured += 1
                continue
            run = Run(summary_path.parent, f"{model}/{data}", int(budget), int(seed), method,
                      (cfg.get("prune") or {}).get("name", "?"), setting_of(cfg), s["val_error"], s["test_error"], value)
            # A copy of a run (a check rerun, a search trial proposed twice) is not a second sample.
            same = (method, run.network, run.budget, run.seed, tuple(run.setting.items()), run.val,
                    run.test, run.compression)
            if same in seen:
                print(f"note: {run.path} repeats {seen[same]}; counted once", file=sys.stderr)
                continue
            seen[same] = run.path
            runs.append(run)
    if unmeasured:
        print(f"note: {unmeasured} runs record no {measure} (no structure in their summary.json); left out",
              file=sys.stderr)
    return runs


# --- one baseline curve: (val error, log compression, test error), sorted by val error -----------

def curve(runs: list[Run]) -> list[tuple[float, float, float]]:
    best: dict[float, Run] = {}
    for r in runs:  # one point per validation error: the more compressed
        if r.val not in best or r.compression > best[r.val].compression:
            best[r.val] = r
    return sorted((v, math.log(r.compression), r.test) for v, r in best.items())


def at(points: list[tuple[float, float, float]], val: float, name: str) -> tuple[float, float] | str:
    """(compression, test error) of the curve at validation error ``val``, or why there is none."""
    if not points:
        return f"no {name} run at this seed"
    vals = [p[0] for p in points]
    i = bisect.bisect_left(vals, val)
    if i < len(points) and math.isclose(vals[i], val, rel_tol=0, abs_tol=1e-12):
        return math.exp(points[i][1]), points[i][2]  # exactly a point (also a one-point curve's)
    if len(points) == 1:
        return f"one {name} point"
    if i == 0 or i == len(points):
        return f"outside {name}'s range"
    (v0, c0, t0), (v1, c1, t1) = points[i - 1], points[i]
    w = (val - v0) / (v1 - v0)
    return math.exp(c0 + w * (c1 - c0)), t0 + w * (t1 - t0)


def at_compression(points: list[tuple[float, float, float]], compression: float) -> tuple[float, float] | None:
    """(val error, test error) of the curve at ``compression``, or None outside its range."""
    by_c = sorted((c, v, t) for v, c, t in points)
    x = math.log(compression)
    for (c0, v0, t0), (c1, v1, t1) in zip(by_c, by_c[1:]):
        if c0 <= x <= c1 and c1 > c0:
            w = (x - c0) / (c1 - c0)
            return v0 + w * (v1 - v0), t0 + w * (t1 - t0)
    exact = [(v, t) for c, v, t in by_c if math.isclose(c, x, rel_tol=0, abs_tol=1e-9)]
    return min(exact) if exact else None


# --- per spec setting: the ratios over its seeds -------------------------------------------------

@dataclass
class Comparison:
    ratios: list[float]  # one per seed where the baseline's curve reaches spec's val error
    spec_test: list[float]  # spec's test error on those same seeds
    base_test: list[float]  # the baseline's, interpolated to spec's val error
    missing: dict[str, int]  # why not, and for how many seeds
    # Where there is no ratio: at spec's compression, the baseline's val error minus spec's
    # (above 0: spec more accurate), and both test errors on those seeds.
    gaps: list[float] = field(default_factory=list)
    gap_spec_test: list[float] = field(default_factory=list)
    gap_base_test: list[float] = field(default_factory=list)
    unmatched: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # neither, and why
    order: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # dominates/is dominated: runs
    equal: str = "compression"  # what the fallback holds equal: the measure, in words (--measure)

    def cell(self) -> str:
        n = len(self.ratios)
        text = ""
        if n:
            std = f" ± {statistics.stdev(self.ratios):.2f}" if n > 1 else ""
            text = f"{statistics.mean(self.ratios):.2f}{std}× ({n})"
        why = ", ".join(f"{k} ({v})" if n or len(self.missing) > 1 else k for k, v in self.missing.items())
        text = f"{text}; {why}" if text and why else text or why
        if self.gaps:
            text += f"; at equal {self.equal} {self.gap_text()} ({len(self.gaps)})"
        if self.order:
            text += "; " + ", ".join(f"{k} ({v})" for k, v in sorted(self.order.items()))
        return text

    def gap_text(self) -> str:
        points = [100 * g for g in self.gaps]
        std = f" ± {statistics.stdev(points):.2f}" if len(points) > 1 else ""
        return f"val err {statistics.mean(points):+.2f}{std} pt"

    def verdict(self) -> str | None:
        """wins, ties or loses (against the ratio's spread); one seed has no spread to judge by."""
        return judge(self.ratios, 1.0)

    def gap_verdict(self) -> str | None:
        """The same, at equal compression, for the spec runs with no ratio."""
        return judge(self.gaps, 0.0)


def judge(values: list[float], even: float) -> str | None:
    if not values:
        return None
    mean = statistics.mean(values)
    if len(values) == 1:  # level: the same compression or error, to rounding
        if math.isclose(mean, even, rel_tol=1e-6, abs_tol=1e-9):
            return "is level on a single seed"
        return "is ahead on a single seed" if mean > even else "is behind on a single seed"
    std = statistics.stdev(values)
    return "wins" if mean - even > std else "loses" if even - mean > std else "ties"


def dominance(points: list[tuple[float, float, float]], r: Run) -> str:
    """Whether spec's run beats some baseline point in both validation error and compression, or
    some point beats it, or neither (the curve is on one side of it in one measure only)."""
    logc = math.log(r.compression)
    if any(v >= r.val and c <= logc and (v, c) != (r.val, logc) for v, c, _ in points):
        return "dominates a point"
    if any(v <= r.val and c >= logc for v, c, _ in points):
        return "is dominated"
    return "neither"


def compare(spec_runs: list[Run], baseline: list[Run], name: str, equal: str = "compression") -> Comparison:
    comp = Comparison([], [], [], defaultdict(int), equal=equal)
    if not baseline:
        comp.missing[f"no {name} runs"] = comp.unmatched[f"no {name} runs"] = len(spec_runs)
        return comp
    # l2 is the same shrink without the sensitivity: its curve runs along the spec run's own prune
    # schedule (a threshold search's λ sweep, gmp's targets), never across two regimes. Magnitude
    # pruning is one schedule, gmp, set against spec whatever spec's schedule.
    def key(r: Run) -> tuple:
        return (r.seed, r.schedule) if name == "l2" else (r.seed,)

    curves = {k: curve([r for r in baseline if key(r) == k]) for k in {key(r) for r in baseline}}
    for r in spec_runs:
        points = curves.get(key(r), [])
        got = at(points, r.val, name)
        if isinstance(got, str):
            comp.missing[got] += 1
            there = at_compression(points, r.compression) if points else None
            if there is None:
                comp.unmatched[got] += 1
                if points:
                    comp.order[dominance(points, r)] += 1
            else:
                comp.gaps.append(there[0] - r.val)
                comp.gap_spec_test.append(r.test)
                comp.gap_base_test.append(there[1])
        else:
            comp.ratios.append(r.compression / got[0])
            comp.spec_test.append(r.test)
            comp.base_test.append(got[1])
    return comp


def pct(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f} %" if values else ""


def spread(values: list[float], digits: int | None = None, unit: str = "") -> str:
    mean = statistics.mean(values)
    if digits is None:  # compressions: 22.2×, 85 ± 14×
        digits = 1 if mean < 30 else 0
    std = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{mean:.{digits}f}{std}{unit}"


def labels(settings: list[dict]) -> dict[tuple, str]:
    """A short name per setting: λ, the pruning and a scale of S where there is one, and the other
    fields only where settings of the same λ and pruning differ in them (the stop epoch or η
    schedule of two gmp runs)."""
    names = {}
    for s in settings:
        twins = [t for t in settings if (t["λ"], t["pruning"]) == (s["λ"], s["pruning"])]
        shown = [v for k, v in s.items() if v and (k in ("λ", "pruning", "scale") or len({t[k] for t in twins}) > 1)]
        names[tuple(s.items())] = ", ".join(shown)
    return names


def ranges(values: list[float], fmt: str, unit: str) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}{unit}" if lo == hi else f"{lo:{fmt}}–{hi:{fmt}}{unit}"


def budget_rows(network: str, budget: int, runs: list[Run], equal: str = "compression") -> tuple[list[list[str]], str]:
    """The table rows of one network and budget, one per setting of each subject method (spec,
    neuron), and its verdict."""
    base = {name: [r for r in runs if r.method == name] for name in BASELINES}
    head = [network, str(budget)]
    rows, sentences = [], []
    for subject in SUBJECTS:
        mine = [r for r in runs if r.method == subject]
        if not mine:
            continue
        if not any(base.values()):  # nothing to compare with: one row for every run of the budget
            rows.append(head + _uncompared(subject, mine))
            sentences.append(f"No {' or '.join(BASELINES)} run at this budget.")
            continue
        subject_rows, subject_sentences = _subject_rows(network, budget, subject, mine, base, equal)
        rows += [head + row for row in subject_rows]
        sentences += subject_sentences
    return rows, f"- **{network}, {budget} epochs.** " + " ".join(sentences)


def _uncompared(subject: str, runs: list[Run]) -> list[str]:
    """One row for the runs of ``subject`` at a budget no baseline ran."""
    settings = {tuple(r.setting.items()) for r in runs}
    setting = labels([dict(key) for key in settings])[next(iter(settings))] if len(settings) == 1 else \
        f"{len(settings)} settings ({', '.join(sorted({r.setting['pruning'] for r in runs}))})"
    row = [f"{subject}: {setting}", str(len({r.seed for r in runs})), ranges([r.compression for r in runs], ".3g", "×"),
           ranges([100 * r.val for r in runs], ".2f", " %"), ranges([100 * r.test for r in runs], ".2f", " %")]
    return row + [x for name in BASELINES for x in (f"no {name} runs", "")]


def _subject_rows(network: str, budget: int, subject: str, runs: list[Run], base: dict[str, list[Run]],
                  equal: str) -> tuple[list[list[str]], list[str]]:
    """The rows of one subject method's settings (without the network and budget) and the
    sentences of its verdict, one per baseline."""
    settings: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        settings[tuple(r.setting.items())].append(r)
    names = labels([dict(key) for key in settings])
    rows = []
    judged = defaultdict(list)  # (baseline, outcome) -> "*setting* (ratio; test errors)"
    ordered = defaultdict(list)  # baseline -> "*setting* dominates a point on 2 seeds"
    unjudged = defaultdict(lambda: defaultdict(int))  # baseline -> {why neither: runs}
    for key, members in sorted(settings.items(), key=lambda kv: statistics.mean(r.val for r in kv[1])):
        label = names[key]
        seeds = [r.seed for r in members]
        if len(set(seeds)) < len(seeds):
            print(f"note: {network}, {budget} epochs, {subject} {label}: several runs of one seed, each counted",
                  file=sys.stderr)
        row = [f"{subject}: {label}", str(len(set(seeds))), spread([r.compression for r in members], unit="×"),
               pct([r.val for r in members]), pct([r.test for r in members])]
        for name in BASELINES:
            comp = compare(members, base[name], name, equal)
            row += [comp.cell(), pct(comp.base_test or comp.gap_base_test)]
            outcome = comp.verdict()
            if outcome:
                judged[name, outcome].append(f"*{label}* ({spread(comp.ratios, 2, '×')}; test error "
                                             f"{pct(comp.spec_test)} against {pct(comp.base_test)} on those seeds)")
            outcome = comp.gap_verdict()
            if outcome:
                judged[name, outcome].append(
                    f"*{label}* at equal {equal} ({comp.gap_text()}; test error {pct(comp.gap_spec_test)} "
                    f"against {pct(comp.gap_base_test)} on those seeds)")
            for why, n in comp.unmatched.items():
                unjudged[name][why] += n
            if comp.order:
                ordered[name].append(f"*{label}* " + ", ".join(
                    f"{k} on {v} seed{'s' * (v > 1)}" for k, v in sorted(comp.order.items())))
        rows.append(row)
    return rows, [_verdict(subject, name, judged, ordered[name], unjudged[name]) for name in BASELINES]


def _verdict(subject: str, name: str, judged: dict, ordered: list[str], unjudged: dict[str, int]) -> str:
    """One sentence: how ``subject`` fares against the baseline ``name``."""
    parts = [f"{outcome} at " + ", ".join(judged[name, outcome]) for outcome in OUTCOMES if judged[name, outcome]]
    missing = sum(unjudged.values())
    why = "; ".join(k if k.startswith("no ") else f"{k} for {n} {subject} run{'s' * (n > 1)}"
                    for k, n in unjudged.items())
    if not parts:
        order = f"; ordered only: {'; '.join(ordered)}" if ordered else ""
        return f"Against {name}, {subject}: no comparison ({why}){order}."
    if missing:
        parts.append(f"no comparison for {missing} more {subject} run{'s' * (missing > 1)} ({why})")
    if ordered:
        parts.append("ordered only: " + "; ".join(ordered))
    return f"Against {name}, {subject} " + "; ".join(parts) + "."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="*", default=["outputs/reference", "outputs/study"])
    ap.add_argument("--measure", choices=list(MEASURES), default="compression",
                    help="what is set against validation error (default: compression)")
    args = ap.parse_args()
    _, name, equal = MEASURES[args.measure]
    groups: dict[tuple[str, int], list[Run]] = defaultdict(list)
    for r in find_runs(args.roots, args.measure):
        groups[r.network, r.budget].append(r)
    rows, verdicts = [], []
    for (network, budget), runs in sorted(groups.items()):
        if any(r.method in SUBJECTS for r in runs):
            budget_rows_, verdict = budget_rows(network, budget, runs, equal)
            rows += budget_rows_
            verdicts.append(verdict)
    header = ["network", "epochs", "method: setting", "seeds", name, "val err", "test err",
              *(x for b in BASELINES for x in (f"× {b} at equal val err (n)", f"{b} test err"))]
    print("\n".join(markdown_table(header, rows)))
    print(f"\n× baseline: the method's {name} over the baseline's at the method's validation error, seed by "
          "seed, interpolated along the baseline's runs of that seed and budget; mean ± std over the seeds where "
          "it exists, their number in brackets; where none exists, the baseline's val error minus the method's "
          f"at the method's {equal} (pt: percentage points, above 0: the method more accurate), or only how the points "
          "are ordered. Test err: the baseline's, interpolated the same way (at equal val error where "
          f"there is a ratio, else at equal {equal}).\n")
    print("Verdict (the method wins where the ratio is above 1, or the gap above 0, by more than its std, loses "
          "where it is below by more, ties otherwise):\n")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
