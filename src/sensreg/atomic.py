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
        cause = err if isinstance(err, OSError) else _os_error_under(err)
        if cause is not None:
            # A failed write names no file (write(2) knows only a descriptor), and torch.save's
            # zip writer turns one into a RuntimeError ("unexpected pos ..."): raise the OSError,
            # naming the file meant.
            raise named_os_error(cause, path) from None
        raise


def named_os_error(err: OSError, path: Path) -> OSError:
    """``err`` naming ``path`` (its message then reads "[Errno 28] No space left on device: 'PATH'")."""
    return OSError(err.errno, err.strerror or str(err), str(path))


def first_existing(path: Path) -> Path:
    """``path`` or the nearest of its parents that exists: where a folder to be made would hang."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def path_too_long(path: str | Path) -> str | None:
    """Why the system cannot take ``path`` at all, or None: one of its names longer than the
    file system's limit (NAME_MAX, 255 bytes on most), or the whole longer than PATH_MAX (4096
    bytes on Linux). Any look at such a path (even whether it exists) fails with an OSError."""
    full = os.fsencode(os.path.abspath(os.path.expanduser(str(path))))
    name_max, path_max = 255, 4096
    try:
        name_max = os.pathconf("/", "PC_NAME_MAX")
        path_max = os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        pass
    for name in full.split(b"/"):
        if len(name) > name_max:
            shown = os.fsdecode(name[:24])
            return (f"the name {shown}... in it is {len(name)} bytes long, and the file system takes at "
                    f"most {name_max} bytes for one name")
    if len(full) >= path_max:
        return f"it is {len(full)} bytes long, and the system takes paths of at most {path_max - 1} bytes"
    return None


def check_sqlite_writable(path: Path, wait_s: float) -> None:
    """Open the SQLite file ``path`` and take its write lock, waiting ``wait_s`` seconds for
    another program's; raises sqlite3.Error where it is no database (its header is read), is
    locked for longer, or cannot be written. For the stores of others (MLflow's, Optuna's), which
    answer these with long retries or long tracebacks."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path, timeout=wait_s)) as db:
        db.execute("PRAGMA schema_version")  # reads the header: a file that is no database fails
        db.execute("BEGIN IMMEDIATE")  # the write lock: a read-only file or folder, a held lock fail
        db.rollback()


def _os_error_under(err: BaseException) -> OSError | None:
    """The OSError a non-OSError exception was raised while handling, if any."""
    if not isinstance(err, Exception):
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
