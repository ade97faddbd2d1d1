"""What a run writes: metrics.csv, summary.json, the per-layer table, environment facts.

Every file is written atomically (temporary file in the same folder, fsync, rename), so a
reader never sees a half-written file and a crash leaves the previous version intact.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# insens_mean, insens_below_half: the mean insensitivity max(0, 1 - S) of the kept regularized
# weights at the epoch's last step, and the share of them below 0.5 (blank without a regularizer).
METRIC_COLUMNS = ("epoch", "eta", "lam", "train_loss", "val_loss", "val_error", "remaining_pct",
                  "threshold", "insens_mean", "insens_below_half", "seconds")


def write_atomic(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda f: json.dump(data, f, indent=2, sort_keys=False, default=str))


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """metrics.csv, one row per epoch; rewritten whole each epoch (it is small)."""
    def write(f) -> None:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
    write_atomic(path, write)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v)  # full precision, so a reader gets back exactly what was logged
    return "" if v is None else v


def epoch_line(row: dict[str, Any]) -> str:
    """The one log line per epoch."""
    return (f"epoch {row['epoch']:>3}  eta {row['eta']:.3g}  lam {row['lam']:.3g}  "
            f"train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_err {100 * row['val_error']:.2f}%  remaining {row['remaining_pct']:.2f}%  "
            f"T {row['threshold']:.3g}  "
            + (f"insens {row['insens_mean']:.3f} (<0.5: {100 * row['insens_below_half']:.1f}%)  "
               if row.get("insens_mean") is not None else "")
            + f"{row['seconds']:.1f}s")


def versions() -> dict[str, str]:
    import torch
    import torchvision

    from . import __version__

    # str(): torch.__version__ is a str subclass that weights_only loading refuses.
    out = {"sensreg": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
           "torchvision": str(torchvision.__version__)}
    try:
        import hydra
        out["hydra"] = hydra.__version__
    except ImportError:  # the core runs without Hydra
        pass
    return out


def git_commit(directory: Path | None = None) -> str | None:
    """The commit of the source tree sensreg runs from, if it is a git checkout."""
    directory = directory or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def layer_table(stats: dict, title: str = "Remaining parameters per layer") -> Table:
    """A rich table of per-layer sparsity from ``pruning.sparsity_stats``."""
    t = Table(title=title)
    for col, justify in (("layer", "left"), ("shape", "left"), ("params", "right"), ("nonzero", "right"),
                         ("remaining", "right"), ("compression", "right"), ("FLOPs left", "right")):
        t.add_column(col, justify=justify)
    for r in stats["layers"]:
        flops = f"{100 * r['flops_remaining'] / r['flops_dense']:.2f}%" if r["flops_dense"] else "-"
        t.add_row(r["name"] + ("" if r["prunable"] else " (not pruned)"), "x".join(map(str, r["shape"])),
                  f"{r['params']:,}", f"{r['nonzero']:,}", f"{r['remaining_pct']:.2f}%",
                  f"{r['compression']:.1f}x", flops)
    for label, key in (("prunable", "prunable"), ("all parameters", "all")):
        tot = stats[key]
        t.add_row(f"[bold]{label}[/bold]", "", f"{tot['params']:,}", f"{tot['nonzero']:,}",
                  f"{tot['remaining_pct']:.2f}%", f"{tot['compression']:.1f}x",
                  f"{stats['flops']['remaining_pct']:.2f}%" if key == "all" else "")
    return t


def render_text(renderable, width: int = 110) -> str:
    """A rich renderable as plain text, for log files."""
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, force_terminal=False).print(renderable)
    return buf.getvalue()
