"""Which rows are shown and how: ``--where`` filters, ``--sort``, ``--group`` (the seeds of one
configuration folded into one row, named by what tells the groups apart) and the Pareto front."""

from __future__ import annotations

import fnmatch
import json
import math
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sensreg.records.config_keys import NOT_COMPUTATION, NOT_EXPERIMENT
from sensreg.records.folder import STUDY_JSON

from sensreg.records.compare.output import _fmt_lam
from sensreg.records.compare.runs import (ALIASES, AVERAGED, DEFAULT_SORT, KEYS, NUMERIC, CompareError, Row, _num,
                                     read_preset)

# --- filter and sort -------------------------------------------------------------------------

_WHERE = re.compile(r"^\s*([A-Za-z_.]+)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")


def resolve_key(key: str, option: str) -> str:
    """The Row attribute for a user key (``sens``, ``lam``, ``error``...); CompareError if unknown."""
    k = ALIASES.get(key.lower(), key.lower())
    if k not in KEYS:
        raise CompareError(f"{option}: unknown key {key!r}; the keys are: {', '.join(KEYS)}.")
    return KEYS[k]


def parse_where(expr: str) -> Callable[[Row], bool]:
    """A predicate from ``KEY=VALUE`` (also ``!=``, ``<``, ``<=``, ``>``, ``>=``).

    ``=`` takes alternatives separated by commas (``sens=spec,loss``); text values may be shell
    patterns (``run=*seed1*``); numbers compare as numbers (``lam=1e-4`` matches 0.0001).
    A row without the value never matches.
    """
    m = _WHERE.match(expr)
    if not m:
        raise CompareError(f"--where {expr!r} is not KEY=VALUE (or KEY!=, <, <=, >, >= VALUE), "
                           f"e.g. --where sens=spec or --where 'lam<1e-3'.")
    key, op, text = m.groups()
    attr = resolve_key(key, f"--where {expr!r}")
    numeric = attr in NUMERIC or attr == "seed"  # seeds are kept as text, compared as numbers
    values: list[Any] = text.split(",") if op in ("=", "==", "!=") else [text]
    if numeric:
        try:
            values = [_number(v) for v in values]
        except ValueError:
            raise CompareError(f"--where {expr!r}: {key} is a number, and {text!r} is not one.") from None
    elif attr in ("pareto", "study_front"):
        values = [v.lower() in ("1", "true", "yes", "y") for v in values]
    elif op not in ("=", "==", "!="):
        raise CompareError(f"--where {expr!r}: {key} is text; use = or != with it.")

    def equal(have: Any, want: Any) -> bool:
        if numeric:
            return math.isclose(have, want, rel_tol=1e-9, abs_tol=0.0)
        if isinstance(want, bool):
            return bool(have) == want
        return fnmatch.fnmatchcase(str(have), want)

    def predicate(row: Row) -> bool:
        have = getattr(row, attr)
        if numeric and isinstance(have, str):
            have = _num(have)  # a seed; a group's '0 1 2' is not one number and matches nothing
        if have is None:
            return False
        if op in ("=", "=="):
            return any(equal(have, v) for v in values)
        if op == "!=":
            return not any(equal(have, v) for v in values)
        want = values[0]
        return {"<": have < want, "<=": have <= want, ">": have > want, ">=": have >= want}[op]

    return predicate


def _number(text: str) -> float:
    """A number as --where takes it: 1e-4, 0.5, or a count with k, M or G (540k, 3.2M)."""
    text = text.strip()
    scale = {"k": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:]) if text else None
    return float(text[:-1]) * scale if scale else float(text)


def filter_rows(rows: list[Row], wheres: Iterable[str]) -> list[Row]:
    """The rows matching every ``--where`` expression."""
    predicates = [parse_where(w) for w in wheres]
    return [r for r in rows if all(p(r) for p in predicates)]


def sort_rows(rows: list[Row], spec: str | None = None) -> list[Row]:
    """Rows sorted by comma-separated keys; ``-key`` sorts that key descending. Missing values last."""
    keys = [k.strip() for k in (spec or DEFAULT_SORT).split(",") if k.strip()]
    if not keys:
        raise CompareError("--sort needs at least one key, e.g. --sort error or --sort=-remaining.")
    parsed = [(resolve_key(k.lstrip("-"), f"--sort {spec!r}"), k.startswith("-")) for k in keys]
    out = list(rows)
    for attr, descending in reversed(parsed):  # stable sorts, least significant key first
        present = [r for r in out if getattr(r, attr) is not None]
        missing = [r for r in out if getattr(r, attr) is None]
        present.sort(key=lambda r: _sort_value(getattr(r, attr)), reverse=descending)
        out = present + missing
    return out


def _sort_value(v: Any) -> Any:
    # Seeds are stored as text; '10' must come after '2'.
    if isinstance(v, str):
        return (0, float(v), "") if re.fullmatch(r"-?\d+(\.\d*)?", v) else (1, 0.0, v)
    return v


# --- group and Pareto ------------------------------------------------------------------------

def group_rows(rows: list[Row], warnings: list[str] | None = None) -> list[Row]:
    """One row per configuration (runs sharing a config_hash, i.e. differing only in the seed).

    Metrics are the mean over the members that finished, with the sample standard deviation
    in ``std`` when two or more did; ``n`` counts those members. The status lists what the
    members are doing (e.g. ``2 completed, 1 running``). Runs without a hash stay alone. A run
    found twice (the same hash and seed in two folders: a copy) counts once; ``warnings`` gets a
    line naming both folders. Each group is named by what it is (``name_groups``).
    """
    groups: dict[str, list[Row]] = {}
    for r in drop_duplicate_seeds(rows, warnings if warnings is not None else []):
        groups.setdefault(r.config_hash or f"run:{r.path}", []).append(r)
    out = []
    for key, members in groups.items():
        first = members[0]
        done = [m for m in members if m.n > 0]
        counts: dict[str, int] = {}
        for m in members:
            counts[m.status] = counts.get(m.status, 0) + 1
        status = first.status if len(counts) == 1 else ", ".join(f"{c} {s}" for s, c in sorted(counts.items()))
        g = replace(first, path=";".join(m.path for m in members),
                    status=status, seed=" ".join(sorted((m.seed for m in members if m.seed is not None),
                                                        key=_sort_value)) or None,
                    n=len(done), std={}, pareto=False, study_front=any(m.study_front for m in members),
                    epochs_done=min((m.epochs_done for m in members if m.epochs_done is not None), default=None))
        for attr in AVERAGED:
            values = [getattr(m, attr) for m in done if getattr(m, attr) is not None]
            setattr(g, attr, statistics.fmean(values) if values else None)
            if len(values) >= 2:
                g.std[attr] = statistics.stdev(values)
        out.append(g)
    name_groups(out)
    return out


def drop_duplicate_seeds(rows: list[Row], warnings: list[str]) -> list[Row]:
    """The rows with each (config hash, seed) once. The same run found in two folders (copied,
    or compared through two paths) would count twice in its group's mean and seeds; the copy
    that finished is kept (the first found, where both did), and a warning names both."""
    kept: dict[tuple[str, str], Row] = {}
    for r in rows:
        if r.config_hash is None or r.seed is None:
            continue
        key = (r.config_hash, r.seed)
        if key not in kept:
            kept[key] = r
            continue
        warnings.append(f"config {r.config_hash} seed {r.seed} is in two run folders, counted once: "
                        f"{kept[key].path} and {r.path}")
        if r.n > kept[key].n:
            kept[key] = r
    chosen = {id(r) for r in kept.values()}
    return [r for r in rows if r.config_hash is None or r.seed is None or id(r) in chosen]


# Keys that never tell two configurations apart: the seed, and those that say where and how fast
# a run executes (left out of the config hash too).
NOT_CONFIGURATION = ("trainer.seed", *(f"{section}." for section in NOT_EXPERIMENT),
                     *(f"{section}.{key}" for section, key in NOT_COMPUTATION))
# Keys a group name shows first when several would tell the groups apart: those most often varied.
NAME_KEYS = ("model.name", "data.name", "sens.name", "sens.lam", "prune.name", "prune.target",
             "prune.tolerance", "prune.threshold", "trainer.epochs", "optim.name", "optim.lr")


def name_groups(groups: list[Row]) -> None:
    """Name each group (``run``) by what it is, so that no two groups shown share a name.

    A group is named by its preset (``experiment=NAME``, as Hydra recorded it in the run
    folder), else by the folder that holds its seed folders and no others (``lenet300_spec`` for
    outputs/reference/lenet300_spec/seed*), else by its network and sensitivity variant
    (``lenet300 spec``). Groups that would
    share a name get the config keys that tell them apart, as few as do, the most commonly
    varied first, by the names --where knows them by or as on the command line (``default
    prune.target=50x`` / ``default prune.target=22x``, ``lenet300 spec lam=1e-3 prune=gmp``).
    Where some of the groups lack a key (their runs were made before it existed), those that
    still share a name are told apart again by the keys they all have. Two that even these
    cannot tell apart (no config.yaml to read) get their config hash. Runs without a hash keep
    their folder name.
    """
    named = [g for g in groups if g.config_hash]
    # A group whose runs are the only ones in their folder, one folder per seed (outputs/reference/
    # NAME/seed0, as scripts/reproduce_mnist.sh lays them out), is named by that folder where Hydra
    # recorded no preset: whoever laid the folders out named it.
    parents = {g.config_hash: {str(Path(p).parent) for p in g.path.split(";")} for g in named}
    owners: dict[str, int] = {}
    for folders in parents.values():
        for folder in folders:
            owners[folder] = owners.get(folder, 0) + 1
    for g in named:
        preset = next(filter(None, (read_preset(p) for p in g.path.split(";"))), None)
        folders = parents[g.config_hash]
        seeds_only = all(Path(p).name.startswith("seed") for p in g.path.split(";"))
        if not preset and seeds_only and len(folders) == 1 and owners[next(iter(folders))] == 1:
            preset = Path(next(iter(folders))).name
        g.run = preset or " ".join(filter(None, (g.model, g.sens))) or g.config_hash
    for _ in range(len(named)):  # each round tells more groups apart: at most this many rounds
        by_name: dict[str, list[Row]] = {}
        for g in named:
            by_name.setdefault(g.run, []).append(g)
        told = False
        for same in by_name.values():
            keys = _telling_keys(same) if len(same) > 1 else []
            for g in same if keys else []:
                g.run = " ".join([g.run, *(f"{_key_label(k)}={_fmt_value(g.config[k])}" for k in keys)])
            told = told or bool(keys)
        if not told:  # every name is unique, or no key tells the rest apart
            break
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.run] = counts.get(g.run, 0) + 1
    for g in named:
        if counts[g.run] > 1:
            g.run = f"{g.run} {g.config_hash}"


def _telling_keys(groups: list[Row]) -> list[str]:
    """The fewest config keys whose values tell ``groups`` apart, chosen greedily (each time
    the key that splits them most, NAME_KEYS first among equals), in NAME_KEYS order. Only keys
    every group's config has take part: a key added to the config since some runs were made
    is missing from theirs."""
    common = set.intersection(*(set(g.config) for g in groups))
    candidates = sorted((k for k in common if not k.startswith(NOT_CONFIGURATION)
                         and len({_fmt_value(g.config[k]) for g in groups}) > 1), key=_name_key_order)
    chosen: list[str] = []

    def kinds(keys: list[str]) -> int:
        return len({tuple(_fmt_value(g.config[k]) for k in keys) for g in groups})

    while candidates and kinds(chosen) < len(groups):
        best = max(candidates, key=lambda k: kinds(chosen + [k]))  # max keeps the first of equals
        if kinds(chosen + [best]) == kinds(chosen):
            break
        chosen.append(best)
        candidates.remove(best)
    return sorted(chosen, key=_name_key_order)


def _key_label(key: str) -> str:
    """A key as a group name shows it: by the name the table and --where give it (sens.lam is
    lam, prune.name is prune), else as on the command line (prune.target)."""
    return ALIASES.get(key, key)


def _name_key_order(key: str) -> tuple[int, str]:
    return (NAME_KEYS.index(key) if key in NAME_KEYS else len(NAME_KEYS), key)


def _fmt_value(v: Any) -> str:
    """A config value as it is written on the command line: 3e-4, 22x, [40,50], null, true."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, float):
        return _fmt_lam(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(_fmt_value, v)) + "]"
    return str(v)


def mark_study_fronts(rows: list[Row]) -> None:
    """Mark the runs that a pareto sweep's study found on its front: study.json in the sweep
    folder, the run folders' parent (sensreg.commands.pareto), names them relative to itself."""
    fronts: dict[Path, set[Path]] = {}  # sweep folder -> the run folders on its front

    def front_of(sweep_dir: Path) -> set[Path]:
        if sweep_dir not in fronts:
            fronts[sweep_dir] = set()
            study = sweep_dir / STUDY_JSON
            if study.is_file():
                try:
                    trials = json.loads(study.read_text(encoding="utf-8"))["trials"]
                    fronts[sweep_dir] = {(sweep_dir / t["run_dir"]).resolve()
                                         for t in trials if t.get("on_front") and t.get("run_dir")}
                except (OSError, ValueError, KeyError, TypeError):
                    pass  # a damaged study file marks nothing; the runs are still compared
        return fronts[sweep_dir]

    for r in rows:
        paths = [Path(p).resolve() for p in r.path.split(";")]
        r.study_front = any(p in front_of(p.parent) for p in paths)


def mark_pareto(rows: list[Row]) -> list[Row]:
    """Mark the rows no other row beats: none has both fewer-or-equal remaining parameters and a
    lower-or-equal test error (one of them strictly). Only rows with both figures take part, and
    rows compete only with rows of the same network and dataset. Returns the marked rows."""
    for r in rows:
        r.pareto = False
    scored = [r for r in rows if r.test_error_pct is not None and r.remaining_pct is not None]
    for r in scored:
        r.pareto = not any(
            o is not r and (o.model, o.data) == (r.model, r.data)
            and o.remaining_pct <= r.remaining_pct and o.test_error_pct <= r.test_error_pct
            and (o.remaining_pct < r.remaining_pct or o.test_error_pct < r.test_error_pct)
            for o in scored)
    return [r for r in rows if r.pareto]


