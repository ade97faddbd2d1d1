"""What a run records about where it ran: package versions and the source commit."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def versions() -> dict[str, str]:
    import torch
    import torchvision

    from sensreg import __version__
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
