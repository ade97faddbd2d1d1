"""Files written whole or not at all.

Every file of a run folder is written into a temporary file in the same folder, flushed to
disk and renamed into place, so that a reader never sees a half-written file and a crash (or a
full disk) leaves the previous version intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMPORARY_GLOB = ".*.tmp"  # the temporary files' names: what a killed writer may leave behind


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
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_under(err)
        if cause is not None:
            # torch.save's zip writer turns a failed write (a full disk) into a RuntimeError
            # ("unexpected pos ..."): raise the OSError underneath, naming the file meant.
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise


def first_existing(path: Path) -> Path:
    """``path`` or the nearest of its parents that exists: where a folder to be made would hang."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _os_error_under(err: BaseException) -> OSError | None:
    """The OSError a non-OSError exception was raised while handling, if any."""
    if isinstance(err, OSError) or not isinstance(err, Exception):
        return None
    seen = err.__cause__ or err.__context__
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, lambda f: json.dump(data, f, indent=2, sort_keys=False, default=str))
