"""Every command the README and `sensreg train --help` show, run as written at a tiny size.

Each command is read from the README's ``bash`` blocks and from the examples at the end of
`sensreg train --help`, in the order a reader meets them, and run in a scratch folder that holds
a copy of the reference runs and the scripts. Training commands get a tiny size appended (later
overrides win in Hydra): synthetic data, one epoch. Placeholders the README writes for the
reader's own folders (``outputs/runs/<date>/<run>``) are filled with the folders the earlier
commands made. A README example that stops working fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import HANG_S, REPO, run_dirs, sensreg

TINY = ["data=synthetic", "data.num_train=200", "data.num_test=100", "trainer.epochs=1",
        "trainer.device=cpu", "trainer.progress=false"]
PARETO_TINY = ["hydra.sweeper.n_trials=2"]
# Shown for a reader's own machine, not run here: installing, the test suite itself, and the
# full reproduction (hours; the same script is run on one preset below).
NOT_RUN = ("pip install", "python -m pytest", "scripts/reproduce_mnist.sh")


def readme_commands() -> list[list[str]]:
    """Each command of the README's bash blocks, as words (comments dropped, `a && b` split)."""
    text = (REPO / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    out.append(words)
    return out


def help_commands(cwd: Path) -> list[list[str]]:
    """The examples at the end of `sensreg train --help`."""
    out = sensreg("train", "--help", cwd=cwd)
    assert out.returncode == 0, out.stderr
    examples = out.stdout.partition("Examples:")[2]
    return [shlex.split(line, comments=True) for line in examples.splitlines()
            if line.strip().startswith("sensreg ")]


def skipped(words: list[str]) -> bool:
    line = " ".join(words)
    return line.startswith(NOT_RUN) and line != "scripts/reproduce_mnist.sh outputs/reproduce lenet300_spec"


def filled(words: list[str], cwd: Path) -> list[str]:
    """The README's placeholders replaced by the folders that earlier commands made."""
    out = []
    for w in words:
        if w == "outputs/runs/<date>/<run>":
            w = str(run_dirs(cwd / "outputs" / "runs")[0])
        elif w == "outputs/multirun/<date>/<time>":
            w = str(run_dirs(cwd / "outputs" / "multirun")[0].parent)
        elif w.startswith("outputs/pareto/mnist_"):  # tiny runs train on synthetic data
            w = w.replace("/mnist_", "/synthetic_")
        out.append(w)
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("walkthrough")
    shutil.copytree(REPO / "outputs" / "reference", cwd / "outputs" / "reference")
    shutil.copytree(REPO / "scripts", cwd / "scripts")
    shutil.copytree(REPO / "examples", cwd / "examples")
    if (REPO / "data").is_dir():
        (cwd / "data").symlink_to(REPO / "data")
    return cwd


def run_as_written(words: list[str], cwd: Path):
    words = filled(words, cwd)
    env = {"HYDRA_FULL_ERROR": "", "EXTRA": " ".join(TINY)}  # EXTRA: reproduce_mnist.sh's extra overrides
    while re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # a variable set for the command: OMP_NUM_THREADS=1
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[0] == "sensreg":
        if words[1] == "train" and "--help" not in words:
            words = [*words, *TINY, *(PARETO_TINY if "hydra/sweeper=pareto" in words else [])]
        return sensreg(*words[1:], cwd=cwd, env=env)
    import subprocess
    import sys

    if words[0] == "python":
        words = [sys.executable, *words[1:]]
    return subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=HANG_S,
                          env={**os.environ, **env})


def needs_mnist(words: list[str]) -> bool:
    # The committed reference runs were trained on MNIST: re-evaluating one needs it; the
    # example loop trains on it.
    return (words[:2] == ["sensreg", "eval"] and "outputs/reference" in " ".join(words)) or \
        "examples/own_loop.py" in words


@pytest.mark.slow
def test_every_readme_and_help_command_runs_as_written(scratch):
    commands = readme_commands() + help_commands(scratch)
    assert len(commands) >= 15  # the parsing found the README's examples
    ran = []
    for words in commands:
        if skipped(words) or (needs_mnist(words) and not (REPO / "data" / "MNIST" / "raw").is_dir()):
            continue
        out = run_as_written(words, scratch)
        assert out.returncode == 0, (" ".join(words), out.stdout[-2000:], out.stderr[-2000:])
        assert "Traceback" not in out.stdout + out.stderr, " ".join(words)
        ran.append(" ".join(words))
    assert "sensreg train" in ran and any(r.startswith("sensreg compare") for r in ran)
