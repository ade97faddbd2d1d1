"""Messages say what happened: a file of another kind, a folder, an unreadable file and a damaged
dataset are each named for what they are."""

from __future__ import annotations

import gzip

import pytest

from sensreg.errors import UserError
from sensreg.records.checkpoint import load_file


def test_a_json_file_is_called_a_text_file_not_a_pickled_object(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"status": "completed"}')
    with pytest.raises(UserError, match="is a text file \\(JSON or YAML, by its first bytes\\)"):
        load_file(path, "trainer.init")


def test_a_folder_is_called_a_folder_not_missing(tmp_path):
    with pytest.raises(UserError, match="is a folder, not a file"):
        load_file(tmp_path, "checkpoint")
    with pytest.raises(UserError, match="does not exist"):
        load_file(tmp_path / "nothing.pt", "checkpoint")


def test_a_damaged_mnist_is_called_damaged_not_missing(tmp_path):
    from sensreg.data.tensors import _FILES, load_mnist

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in _FILES:
        with gzip.open(raw / name, "wb") as f:
            f.write(b"not the idx format")
    with pytest.raises(UserError, match="are there but cannot be read") as err:
        load_mnist(tmp_path, ((0.1307,), (0.3081,)))
    assert "is not in" not in str(err.value)
    assert sorted(p.name for p in raw.iterdir()) >= sorted(_FILES)  # left as they were
