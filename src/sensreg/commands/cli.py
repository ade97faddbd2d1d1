"""`sensreg <command> [overrides]`: one entry per command.

- ``train``: a Hydra application (config groups, overrides, ``-m`` sweeps, ``--cfg job``,
  ``--help``) over the configs shipped in the package as ``sensreg.configs`` (``train.py``).
- ``eval CHECKPOINT [data.KEY=VALUE ...]``: re-evaluates a saved model on its test set
  (``reevaluate.py``, ``run/reevaluate.py``).
- ``compare PATH ...``: a table, compare.csv/.md and plots of every run below PATH
  (``compare_report.py``, ``records/compare/``).
- ``report RUN_DIR``: report.md and plots for one run (``compare_report.py``, ``records/report.py``).
- ``export RUN``: the run's network compacted and written as model.pt2 and model.onnx
  (``export.py``, ``run/export.py``).

User mistakes end with a one-paragraph message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import signal
import sys

from importlib import import_module

from sensreg.commands.console import fail, stop_code, stopped_by
from sensreg.run.interrupt import raise_stopped

# Each command's module and function, imported once the command is known (and inside the Ctrl-C
# handler: torch takes a second or two to load).
COMMANDS = {"train": ("sensreg.commands.train", "run_train"), "eval": ("sensreg.commands.reevaluate", "run_eval"),
            "compare": ("sensreg.commands.compare_report", "run_compare"),
            "report": ("sensreg.commands.compare_report", "run_report"),
            "export": ("sensreg.commands.export", "run_export")}
USAGE = """\
usage: sensreg <command> [options] [key=value ...]
       sensreg --version

commands:
  train [overrides]                 train, regularize by sensitivity, prune, evaluate, report
                                    (Hydra: `sensreg train --help` lists groups and options,
                                    `-m` runs a sweep, `--cfg job` prints the composed config)
  eval CHECKPOINT [data.KEY=VALUE]  recompute test error and sparsity of a saved model.pt (or of
                                    a run folder's)
                                    (--json for machine-readable output; trainer.device=cpu|cuda)
  compare PATH... [options]         table of every run below PATH (folders or globs): error,
                                    remaining %, compression, Pareto front; writes compare.csv,
                                    compare.md and plots (--sort, --where, --group, --out,
                                    --wide for every column)
  report RUN_DIR [--out DIR]        report.md and plots for one run folder
  export RUN [--out DIR]            the run's pruned network compacted (dead units removed) and
                                    written as model.pt2 and model.onnx, checked against the run,
                                    with its size, multiply-adds and speed (export.json)

examples:
  sensreg train model=lenet5 sens=unspec
  sensreg train -m sens.lam=1e-5,1e-4 trainer.seed=0,1
  sensreg eval outputs/runs/2026-01-01/12-00-00-000000_lenet300_spec/model.pt
  sensreg compare outputs/ --where sens=spec,loss --group --sort error
  sensreg report outputs/runs/2026-01-01/12-00-00-000000_lenet300_spec
  sensreg export outputs/reference/lenet300_long80_spec/seed0 --out /tmp/lenet300
"""

def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if argv[0] in ("--version", "-V", "version"):
        from sensreg import __version__

        print(f"sensreg {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(f"unknown command {command!r}; the commands are: {', '.join(COMMANDS)}. See `sensreg --help`.")
    # Before the first file is written: a run replaces these with its own once it trains (it
    # saves a checkpoint first); until then a stop is an orderly one, as Ctrl-C's is.
    previous = {signum: signal.signal(signum, raise_stopped) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        module, function = COMMANDS[command]
        getattr(import_module(module), function)(rest)
    except KeyboardInterrupt as err:
        # train and eval say more where they catch it; anywhere else (compare, report, an import)
        # one line: every file sensreg writes is written whole, so a stop leaves none half-written.
        done = ("no run was training (a run folder already finished is complete)" if command == "train"
                else "no file was left half-written")
        fail(f"sensreg {command} stopped by {stopped_by(err)}; {done}. Run the command again to finish.",
             code=stop_code(err))
    finally:  # (main may be called in a process that goes on: a test, a script)
        for signum, handler in previous.items():
            signal.signal(signum, handler)

