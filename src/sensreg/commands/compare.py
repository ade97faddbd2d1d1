"""Reading many run folders back: discovery, robust records, filter, sort, group, Pareto front.

``compare(paths, ...)`` is what ``sensreg compare`` runs: it finds every run folder below the
given paths (single runs, sweeps, whole ``outputs/`` trees), reads each into a ``Row`` without
trusting it (a corrupt or half-written ``summary.json`` is skipped and reported, never a crash),
keeps the rows that match ``--where``, optionally folds the seeds of one configuration into one
row (runs sharing a ``config_hash``), marks the Pareto-optimal rows and writes ``compare.csv``,
``compare.md`` and one plot per network and dataset. Nothing here imports torch, so the command
starts fast; matplotlib is imported only when a plot is drawn (``plots.py``).
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from rich.cells import cell_len
from rich.text import Text

from sensreg.atomic import write_atomic
from sensreg.errors import UserError
from sensreg.run.folder import CONFIG_NAME, METRICS_NAME, STUDY_JSON, SUMMARY_NAME, RunFolder, relative_below
from sensreg.run.tables import FitTable, markdown_table
from sensreg.run.trackers import flat  # dotted keys, as the trackers log the config

CSV_NAME, MD_NAME = "compare.csv", "compare.md"
DEFAULT_SORT = "model,data,sens,lam,eta,seed,run"
# Metrics that are averaged over the seeds of a configuration (mean and sample std).
AVERAGED = ("test_error_pct", "remaining_pct", "compression", "wall_time_s")


class CompareError(UserError, ValueError):
    """A user mistake (no such path, no runs, an unknown key); the message says how to fix it."""


@dataclass
class Skipped:
    """A folder that looks like a run but cannot be read; listed, never fatal."""

    path: Path
    reason: str


@dataclass
class Row:
    """One run, or (after ``group_rows``) the seeds of one configuration."""

    run: str  # display name: the path below the common folder of the inputs, or the config hash
    path: str  # the run folder; for a group, the member folders joined by ';'
    status: str
    model: str | None = None
    data: str | None = None
    sens: str | None = None
    prune: str | None = None
    lam: float | None = None
    eta: float | None = None
    epochs: int | None = None
    epochs_done: int | None = None
    seed: str | None = None  # a string so that a group can hold '0 1 2'
    test_error_pct: float | None = None
    remaining_pct: float | None = None
    compression: float | None = None
    wall_time_s: float | None = None
    samples: int | None = None  # the training budget: samples seen (summary.json's budget)
    config_hash: str | None = None
    n: int = 0  # how many runs contributed results (1 for a finished run, 0 for a running one)
    std: dict[str, float] = field(default_factory=dict)  # sample std of AVERAGED, groups only
    pareto: bool = False
    study_front: bool = False  # on the front a pareto sweep's study found (validation figures)
    # config.yaml as dotted keys (sens.lam: 1e-4): what tells the groups apart in their names
    config: dict[str, Any] = field(default_factory=dict, repr=False)


# What --where and --sort accept: user key -> Row attribute. Aliases are the names a user may
# remember from config.yaml, summary.json or the table header.
KEYS: dict[str, str] = {
    "run": "run", "path": "path", "status": "status", "model": "model", "data": "data",
    "sens": "sens", "prune": "prune", "samples": "samples", "lam": "lam", "eta": "eta", "epochs": "epochs", "seed": "seed",
    "error": "test_error_pct", "remaining": "remaining_pct", "compression": "compression",
    "wall": "wall_time_s", "hash": "config_hash", "n": "n", "pareto": "pareto",
    "front": "study_front",
}
ALIASES = {"lambda": "lam", "lr": "eta", "sens.name": "sens", "sens.lam": "lam", "optim.lr": "eta",
           "model.name": "model", "data.name": "data", "trainer.seed": "seed", "trainer.epochs": "epochs",
           "test_error": "error", "test_error_pct": "error", "remaining_pct": "remaining",
           "wall_time": "wall", "wall_time_s": "wall", "config_hash": "hash", "prune.name": "prune",
           "budget": "samples"}
NUMERIC = {"lam", "eta", "epochs", "test_error_pct", "remaining_pct", "compression", "wall_time_s", "n",
           "samples"}


# --- discovery and reading -------------------------------------------------------------------

def expand_paths(paths: Iterable[str]) -> list[Path]:
    """The folders named by ``paths``, globs expanded (for when the shell did not expand them).

    Raises CompareError for a path that does not exist, a glob that matches nothing, or a file.
    """
    out: list[Path] = []
    for p in paths:
        pattern = glob.has_magic(p)
        # A pattern may also match files (a sweep's multirun.yaml beside its job folders): skip those.
        matches = [m for m in sorted(glob.glob(os.path.expanduser(p))) if Path(m).is_dir()] if pattern \
            else [os.path.expanduser(p)]
        if not matches or not Path(matches[0]).exists():
            raise CompareError(f"{p} does not exist{' (the pattern matches no folder)' if pattern else ''}; "
                               f"give folders that hold run folders, e.g. `sensreg compare outputs/`.")
        if not Path(matches[0]).is_dir():
            raise CompareError(f"{p} is a file; sensreg compare takes folders (a run folder, a sweep "
                               f"folder or a whole outputs/ tree).")
        out += [Path(m) for m in matches]
    return out


def find_run_dirs(roots: Iterable[Path]) -> list[Path]:
    """Every run folder at or below ``roots``: a folder with a summary.json or a config.yaml.

    Hidden folders (Hydra's ``.hydra/``) are not searched; nor is anything below a run folder.
    """
    found: dict[Path, None] = {}  # ordered set, keyed by resolved path so overlapping roots count once
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            if SUMMARY_NAME in filenames or CONFIG_NAME in filenames:
                found.setdefault(Path(dirpath).resolve())
                dirnames[:] = []
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return list(found)


def read_run(run_dir: Path, name: str) -> Row | Skipped:
    """One run folder as a Row; a Skipped (with the reason) if its summary.json is unusable."""
    run = RunFolder(run_dir).read()
    error = run.errors.get(SUMMARY_NAME)
    if isinstance(error, FileNotFoundError):
        return Skipped(run_dir, "no summary.json (the run never started, or its folder is incomplete)")
    if error is not None:
        return Skipped(run_dir, f"summary.json cannot be read (corrupt or half-written): {type(error).__name__}: {error}")
    if run.status is None:
        return Skipped(run_dir, "summary.json is not a sensreg run summary (no status)")
    summary, section = run.summary, run.section
    epochs = _int(section("trainer").get("epochs"))
    done = len(run.metrics) if METRICS_NAME not in run.errors and run.folder.metrics_path.exists() else None
    if summary.get("epochs_completed") is not None:
        done = _int(summary.get("epochs_completed"))
    error = _num(summary.get("test_error"))
    finished = error is not None and _num(summary.get("remaining_pct")) is not None
    return Row(
        run=name, path=str(run_dir), status=run.status,
        model=_str(summary.get("model") or section("model").get("name")),
        data=_str(summary.get("data") or section("data").get("name")),
        sens=_str(summary.get("sens") or section("sens").get("name")),
        prune=_str(section("prune").get("name")),
        samples=_int(summary["budget"].get("samples")) if isinstance(summary.get("budget"), dict) else None,
        lam=_num(section("sens").get("lam")), eta=_num(section("optim").get("lr")),
        epochs=epochs, epochs_done=done,
        seed=_str(summary.get("seed", section("trainer").get("seed"))),
        test_error_pct=None if error is None else 100.0 * error,
        remaining_pct=_num(summary.get("remaining_pct")), compression=_num(summary.get("compression")),
        wall_time_s=_num(summary.get("wall_time_s")), config_hash=_str(summary.get("config_hash")),
        n=1 if finished else 0, config=flat(run.config),
    )


HYDRA_RECORD = Path(".hydra") / "hydra.yaml"  # Hydra's record of the run, with the group choices


def read_preset(run_dir: str | Path) -> str | None:
    """The preset a run was made with (``experiment=NAME``, ``default`` for the main job), as
    Hydra recorded it in the run folder; None where it did not (``~experiment``, or a folder
    copied without its .hydra/)."""
    try:
        text = (Path(run_dir) / HYDRA_RECORD).read_text(encoding="utf-8")
        record = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 4 kB a run: the C loader
        name = record["hydra"]["runtime"]["choices"].get("experiment")
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def read_runs(run_dirs: list[Path], base: Path | None = None) -> tuple[list[Row], list[Skipped]]:
    """Rows for the readable runs and the list of skipped folders; names relative to ``base``."""
    rows, skipped = [], []
    for d in run_dirs:
        name = d.name
        if base is not None:
            rel = os.path.relpath(d, base)
            name = d.name if rel in (".", "") or rel.startswith("..") else rel
        result = read_run(d, name)
        (skipped if isinstance(result, Skipped) else rows).append(result)
    return rows, skipped


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _int(v: Any) -> int | None:
    x = _num(v)
    return None if x is None else int(x)


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


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
# a run executes (config.NOT_EXPERIMENT and config.NOT_COMPUTATION, left out of the config hash;
# written out here because run/config.py imports torch, which this module does not).
NOT_CONFIGURATION = ("trainer.seed", "logger.", "trainer.device", "trainer.progress", "trainer.channels_last",
                     "trainer.checkpoint_every", "trainer.resume", "data.root", "data.num_workers",
                     "data.pin_memory", "data.persistent_workers", "data.prefetch_factor")
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


# --- output: rich table, CSV, Markdown, plots --------------------------------------------------

def _fmt_num(v: float | None, kind: str = "g") -> str:
    if v is None:
        return "-"
    if kind == "pct":  # two decimals, but three significant digits below 1 % (0.357 % remaining)
        return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3g}"
    if kind == "x":
        return f"{v:.1f}×"
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
        ("wall time", lambda r: _cell(r, "wall_time_s", "s")),
        ("status", lambda r: r.status),
    ]
    return cols


# The columns the terminal shows without --wide: what a run came to and what it cost. Where even
# these do not fit, those with a number give way, lowest first: compression first, as it is
# 100 / remaining; the name, test error and remaining parameters never do.
NARROW = {"": None, "run": None, "config": None, "test err %": None, "remaining %": None,
          "compression": 0, "epochs": 2, "n": 1, "status": 3}


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
        t.add_column(header, justify="left" if header in TEXT_COLUMNS else "right",
                     min_width=max((cell_len(r.run) for r in rows), default=0) if name else None,
                     drop=None if wide else NARROW[header])
    for r in rows:
        style = "bold" if r.pareto else ("dim" if r.status not in ("completed",) and r.n == 0 else None)
        t.add_row(*(Text(cell(r)) for _, cell in cols), style=style)  # Text: a name is not markup
    return t


CSV_COLUMNS = ("run", "status", "model", "data", "sens", "lam", "eta", "epochs", "epochs_done", "seed", "n",
               "test_error_pct", "test_error_pct_std", "remaining_pct", "remaining_pct_std",
               "compression", "compression_std", "wall_time_s", "wall_time_s_std", "prune", "samples", "config_hash",
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
        lines += ["", "## Test error against remaining parameters", ""]
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


def write_plots(rows: list[Row], out_dir: Path) -> list[Path]:
    """One PNG per (network, dataset) with results: test error against remaining parameters."""
    from sensreg.run.plots import pareto_plot  # matplotlib only when a plot is drawn

    pairs: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.test_error_pct is not None and r.remaining_pct is not None:
            pairs.setdefault((r.model, r.data), []).append(r)
    written = []
    for (model, data), members in pairs.items():
        # Dense runs (no regularizer, no pruning) are a band, not a point at 100 % remaining: the
        # error every pruned point is measured against, with its budget.
        dense = [r for r in members if r.sens == "none" and r.prune == "none"]
        members = [r for r in members if r not in dense]
        if not members:
            continue
        # Points are labelled with the settings that differ between them (a λ sweep: λ), as long
        # as there are few enough points for the labels to stay readable.
        varying = [(sym, attr, fmt) for sym, attr, fmt in (("λ", "lam", _fmt_lam), ("η", "eta", _fmt_num),
                                                          ("epochs", "epochs", _fmt_num))
                   if len({getattr(r, attr) for r in members}) > 1] if len(members) <= MAX_LABELLED else []
        # The budget a point's marker stands for: the samples seen where every run of the plot
        # records them, else the epochs (runs saved before budgets were recorded have only those;
        # on one network and dataset the two say the same).
        in_samples = all(r.samples for r in members)
        series: dict[str, list[dict]] = {}
        for r in members:
            # One series per variant; a schedule other than the threshold search is part of its name.
            name = (r.sens or "?") + (f" prune={r.prune}" if r.prune not in (None, "search") else "")
            series.setdefault(name, []).append({
                "x": r.remaining_pct, "y": r.test_error_pct,
                "budget": f"{_fmt_count(r.samples)} samples" if in_samples
                          else f"{_fmt_num(r.epochs)} epochs" if r.epochs else None,
                "xerr": r.std.get("remaining_pct"), "yerr": r.std.get("test_error_pct"),
                "label": " ".join(f"{sym}={fmt(getattr(r, attr))}" for sym, attr, fmt in varying)})
        path = out_dir / f"compare_{_safe(model)}_{_safe(data)}.png"
        seeds = " (mean ± std over seeds)" if any(r.n > 1 for r in members) else ""
        pareto_plot(series, references_for(model, data), path,
                    title=f"{model} on {data}: test error vs remaining parameters{seeds}",
                    dense=dense_bands(dense))
        written.append(path)
    return written


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
    run_dirs = find_run_dirs(roots)
    if not run_dirs:
        raise CompareError(f"no run folders below {', '.join(map(str, roots))} (a run folder holds a "
                           f"summary.json); point sensreg compare at outputs/ or at a sweep folder.")
    base = Path(os.path.commonpath([str(r.resolve()) for r in roots]))
    rows, skipped = read_runs(run_dirs, base)
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
