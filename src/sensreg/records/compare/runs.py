"""Finding run folders and reading each into a ``Row``, without trusting it: a corrupt or
half-written ``summary.json`` is a ``Skipped`` with its reason, never a crash."""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sensreg.errors import UserError
from sensreg.records.folder import CONFIG_NAME, METRICS_NAME, SUMMARY_NAME, RunFolder
from sensreg.records.structure import ratio
from sensreg.records.config_keys import flat  # dotted keys, as the trackers log the config


CSV_NAME, MD_NAME = "compare.csv", "compare.md"
DEFAULT_SORT = "model,data,sens,lam,eta,seed,run"
# Metrics that are averaged over the seeds of a configuration (mean and sample std).
AVERAGED = ("test_error_pct", "remaining_pct", "compression", "params_compact", "macs_compact", "macs_x", "macs_pct",
            "wall_time_s")


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
    # The compacted network (summary.json's structure): its parameters and multiply-adds per
    # sample, and how many times fewer multiply-adds than the dense network it needs.
    params_compact: float | None = None
    macs_compact: float | None = None
    macs_x: float | None = None
    macs_pct: float | None = None  # the compacted network's multiply-adds in % of the dense one's (plots)
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
    "params_compact": "params_compact", "macs": "macs_compact", "macs_x": "macs_x", "macs_pct": "macs_pct",
    "wall": "wall_time_s", "hash": "config_hash", "n": "n", "pareto": "pareto",
    "front": "study_front",
}
ALIASES = {"lambda": "lam", "lr": "eta", "sens.name": "sens", "sens.lam": "lam", "optim.lr": "eta",
           "model.name": "model", "data.name": "data", "trainer.seed": "seed", "trainer.epochs": "epochs",
           "test_error": "error", "test_error_pct": "error", "remaining_pct": "remaining",
           "wall_time": "wall", "wall_time_s": "wall", "config_hash": "hash", "prune.name": "prune",
           "budget": "samples", "compact_params": "params_compact", "macs_compact": "macs_compact",
           "compact_macs": "macs_compact"}
NUMERIC = {"lam", "eta", "epochs", "test_error_pct", "remaining_pct", "compression", "wall_time_s", "n",
           "samples", "params_compact", "macs_compact", "macs_x", "macs_pct"}


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


def find_run_dirs(roots: Iterable[Path], skipped: list[Skipped] | None = None) -> list[Path]:
    """Every run folder at or below ``roots``: a folder with a summary.json or a config.yaml.

    Hidden folders (Hydra's ``.hydra/``) are not searched; nor is anything below a run folder.
    Symbolic links to folders are followed, once each; a folder that cannot be listed, and a
    link that leads back into what is being searched, go into ``skipped`` with the reason.
    """
    found: dict[Path, None] = {}  # ordered set, keyed by resolved path so overlapping roots count once
    skipped = [] if skipped is None else skipped

    def unreadable(err: OSError) -> None:
        skipped.append(Skipped(Path(err.filename or "?"), f"cannot be listed or entered ({err.strerror or err})"))

    for root in roots:
        searched: set[Path] = set()  # per root: a second root may lead into the same folders
        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
            here = Path(dirpath).resolve()
            if here in searched:  # (only through a link: os.walk itself visits each path once)
                skipped.append(Skipped(Path(dirpath), f"a symbolic link to {here}, searched already (a loop)"))
                dirnames[:] = []
                continue
            searched.add(here)
            if SUMMARY_NAME in filenames or CONFIG_NAME in filenames:
                found.setdefault(here)
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
    if isinstance(error, OSError):
        return Skipped(run_dir, f"summary.json cannot be read ({error.strerror or error})")
    if error is not None:
        return Skipped(run_dir, f"summary.json is not valid JSON (corrupt or half-written): {error}")
    if run.status is None:
        return Skipped(run_dir, "summary.json is not a sensreg run summary (no status)")
    summary, section = run.summary, run.section
    epochs = _int(section("trainer").get("epochs"))
    done = len(run.metrics) if METRICS_NAME not in run.errors and run.folder.metrics_path.exists() else None
    if summary.get("epochs_completed") is not None:
        done = _int(summary.get("epochs_completed"))
    error = _num(summary.get("test_error"))
    finished = error is not None and _num(summary.get("remaining_pct")) is not None
    structure = summary.get("structure") if isinstance(summary.get("structure"), dict) else {}
    params, macs = (structure.get(k) if isinstance(structure.get(k), dict) else {} for k in ("params", "macs"))
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
        params_compact=_num(params.get("compact")), macs_compact=_num(macs.get("compact")),
        macs_x=ratio(structure, "macs"), macs_pct=None if ratio(structure, "macs") is None
        else 100.0 / ratio(structure, "macs"), wall_time_s=_num(summary.get("wall_time_s")), config_hash=_str(summary.get("config_hash")),
        n=1 if finished else 0, config=flat(run.config),
    )


HYDRA_RECORD = Path(".hydra") / "hydra.yaml"  # Hydra's record of the run, with the group choices


# Config groups whose choice on the command line changes what a preset is (a group name shows them).
CHOSEN_GROUPS = ("model", "data", "sens", "prune", "optim")


def read_preset(run_dir: str | Path) -> str | None:
    """The preset a run was made with (``experiment=NAME``, ``default`` for the main job), as
    Hydra recorded it in the run folder, followed by the groups chosen on the command line
    against it (``default sens=unspec``: the main job with another variant); None where Hydra
    recorded no preset (``~experiment``, or a folder copied without its .hydra/)."""
    try:
        text = (Path(run_dir) / HYDRA_RECORD).read_text(encoding="utf-8")
        record = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 4 kB a run: the C loader
        name = record["hydra"]["runtime"]["choices"].get("experiment")
        task = record["hydra"].get("overrides", {}).get("task") or []
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    if not (isinstance(name, str) and name):
        return None
    chosen = [o for o in task if isinstance(o, str) and o.partition("=")[0].lstrip("+~") in CHOSEN_GROUPS]
    return " ".join([name, *chosen])


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


