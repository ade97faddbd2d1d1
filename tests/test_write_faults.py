"""Every write point failed in turn: a short training run, `sensreg report` and `sensreg compare`
are run once for each file they write, with that one write failing (no space left, or no
permission), as a full or read-only disk makes it fail.

Each time: exit code 1 and one message naming the file, no traceback, no temporary file or lock
left, a summary that says the run failed, and, once the disk works again, the advice of the
message followed to a run folder equal to that of an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from pathlib import Path

import pytest

from conftest import TINY, assert_same_run, run_in_process

RUN = [*TINY, "sens=unspec", "trainer.deterministic=true", "trainer.progress=false"]
CODES = (errno.ENOSPC, errno.EACCES)


class _FailingFile:
    """A file opened for writing whose writes fail as a full (or read-only) disk makes them."""

    def __init__(self, file, code: int):
        self._file, self._code = file, code

    def write(self, *_):
        raise OSError(self._code, os.strerror(self._code))

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


class WriteFaults:
    """Counts the files sensreg opens for writing (the atomic writes and the lock go through
    os.fdopen, train.log through logging's FileHandler) and makes the writes of the
    ``fail_at``-th fail with ``code``; 0 fails none. ``opened``: the files, in order."""

    def __init__(self, monkeypatch, fail_at: int = 0, code: int = errno.ENOSPC):
        self.fail_at, self.code, self.opened = fail_at, code, []
        real_fdopen, real_open = os.fdopen, logging.FileHandler._open

        def fdopen(fd, *args, **kwargs):
            return self._maybe_failing(real_fdopen(fd, *args, **kwargs), os.readlink(f"/proc/self/fd/{fd}"))

        def open_log(handler):
            return self._maybe_failing(real_open(handler), handler.baseFilename)

        monkeypatch.setattr(os, "fdopen", fdopen)
        monkeypatch.setattr(logging.FileHandler, "_open", open_log)

    def _maybe_failing(self, file, path: str):
        if "w" not in getattr(file, "mode", "w") and "a" not in file.mode:
            return file
        self.opened.append(final_name(path))
        return _FailingFile(file, self.code) if len(self.opened) == self.fail_at else file


def final_name(path: str) -> str:
    """The file a temporary file of an atomic write stands for (.summary.json.x1y2.tmp: summary.json)."""
    name = Path(path).name
    match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)
    name = match.group(1) if match else name
    # Hydra's records (.hydra/config.yaml) by their place in the run folder, not to be taken for
    # the run's own config.yaml
    return f".hydra/{name}" if Path(path).parent.name == ".hydra" else name


def cli(*args: str, capsys) -> tuple[int, str]:
    """``sensreg ARGS`` in this process: (exit code, stderr)."""
    return run_in_process(*args), capsys.readouterr().err


def assert_clean_failure(code: int, err: str, failed_file: str, folder: Path) -> None:
    assert code == 1, (failed_file, code, err)
    assert "Traceback" not in err and "Logging error" not in err, (failed_file, err)
    assert failed_file in err and ("No space left" in err or "Permission denied" in err), (failed_file, err)
    if folder.exists():
        assert not list(folder.rglob(".*.tmp")) and not (folder / ".lock").exists(), (failed_file, list(folder.iterdir()))


def written_files(monkeypatch, capsys, *args: str) -> list[str]:
    with monkeypatch.context() as m:
        faults = WriteFaults(m)
        code, err = cli(*args, capsys=capsys)
    assert code == 0, err
    return faults.opened


@pytest.mark.slow
def test_every_write_of_a_training_run_failed_in_turn_is_one_message_and_the_advice_recovers_it(
        tmp_path, monkeypatch, capsys, in_process_cli):
    monkeypatch.chdir(tmp_path)
    reference = tmp_path / "reference"
    writes = written_files(monkeypatch, capsys, "train", *RUN, f"hydra.run.dir={reference}")
    # The lock, config.yaml, train.log, summary.json, and per epoch metrics.csv and last.pt, then
    # model.pt and the final summary: every kind of file a run writes.
    assert {".lock", "config.yaml", "train.log", "summary.json", "metrics.csv", "last.pt", "model.pt"} <= set(writes)
    for n, name in enumerate(writes, start=1):
        run = tmp_path / f"fail{n}"
        code = CODES[n % 2]
        with monkeypatch.context() as m:
            WriteFaults(m, fail_at=n, code=code)
            status, err = cli("train", *RUN, f"hydra.run.dir={run}", capsys=capsys)
        assert_clean_failure(status, err, str(run / name), run)
        if (run / "summary.json").exists():
            summary = json.loads((run / "summary.json").read_text())
            assert summary["status"] == "failed" and name in summary["error"], (name, summary)
        # The disk works again: do what the message says.
        if f"trainer.resume={run}`" in err:
            again = ["train", *RUN, f"trainer.resume={run}"]
        elif "trainer.resume=true" in err:
            again = ["train", *RUN, f"hydra.run.dir={run}", "trainer.resume=true"]
        else:
            assert "run the command again" in err and not run.exists(), (name, err)
            again = ["train", *RUN, f"hydra.run.dir={run}"]
        status, err = cli(*again, capsys=capsys)
        assert status == 0, (name, err)
        assert json.loads((run / "summary.json").read_text())["status"] == "completed", name
        assert_same_run(run, reference)


@pytest.mark.slow
def test_every_write_of_report_and_compare_failed_in_turn_is_one_message_and_leaves_nothing_half_written(
        tmp_path, monkeypatch, capsys, in_process_cli):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "a"
    assert cli("train", *RUN, f"hydra.run.dir={run}", capsys=capsys)[0] == 0
    commands = {"report": ["report", str(run), "--batches", "2", "--out", "{out}"],
                "compare": ["compare", str(tmp_path / "runs"), "--out", "{out}"]}
    for what, template in commands.items():
        args = lambda out: [a.replace("{out}", str(out)) for a in template]
        writes = written_files(monkeypatch, capsys, *args(tmp_path / f"{what}_ok"))
        assert len(writes) >= 2, writes  # the text and at least one plot
        expected = sorted(p.name for p in (tmp_path / f"{what}_ok").iterdir())
        for n, name in enumerate(writes, start=1):
            out = tmp_path / f"{what}{n}"
            with monkeypatch.context() as m:
                WriteFaults(m, fail_at=n, code=CODES[n % 2])
                status, err = cli(*args(out), capsys=capsys)
            assert_clean_failure(status, err, str(out / name), out)
            assert "--out" in err, err
            # Run again once the disk works: the same files as a run that never failed.
            assert cli(*args(out), capsys=capsys)[0] == 0
            assert sorted(p.name for p in out.iterdir()) == expected, what
