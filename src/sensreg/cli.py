"""`sensreg <command> [overrides]`: one entry per command.

- ``train``: a Hydra application (config groups, overrides, ``-m`` sweeps, ``--cfg job``,
  ``--help``) over the configs shipped in the package as ``sensreg.configs``.
- ``eval CHECKPOINT [data.KEY=VALUE ...]``: re-evaluates a saved model on its test set.

User mistakes end with a one-paragraph message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

from rich.console import Console

USAGE = """\
usage: sensreg <command> [options] [key=value ...]

commands:
  train [overrides]                 train, regularize by sensitivity, prune, evaluate, report
                                    (Hydra: `sensreg train --help` lists groups and options,
                                    `-m` runs a sweep, `--cfg job` prints the composed config)
  eval CHECKPOINT [data.KEY=VALUE]  recompute test error and sparsity of a saved model.pt
                                    (--json for machine-readable output; trainer.device=cpu|cuda)

examples:
  sensreg train model=lenet5 sens=unspec
  sensreg train -m sens.lam=1e-5,1e-4 trainer.seed=0,1
  sensreg eval outputs/runs/2026-01-01/12-00-00-000000_lenet300_spec/model.pt
"""

CONFIG_PACKAGE = "pkg://sensreg.configs"
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print a user-facing error and exit; no traceback."""
    err_console.print(f"[bold red]error:[/bold red] {message}", markup=True)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        run_train(rest)
    elif command == "eval":
        run_eval(rest)
    else:
        fail(f"unknown command {command!r}; the commands are: train, eval. See `sensreg --help`.")


# --- train -------------------------------------------------------------------------------------

def run_train(overrides: list[str]) -> None:
    import hydra

    # Hydra reads its arguments from sys.argv; the program name shows up in its --help.
    sys.argv = ["sensreg train", *overrides]
    hydra.main(config_path=CONFIG_PACKAGE, config_name="train", version_base="1.3")(train_task)()


def train_task(cfg) -> dict | None:
    """The Hydra task: composed config in, plain values and the run folder passed down."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from . import run_folder
    from .checkpoint import CheckpointError
    from .config import ConfigError, TrainConfig
    from .data import DatasetMissing
    from .interrupt import Interrupted
    from .report import write_atomic
    from .train import resume_state, train

    hydra_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        config = TrainConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
        run_dir, resume_from = run_folder.resolve(hydra_dir, config.trainer.resume)
    except (ConfigError, run_folder.RunFolderError) as err:
        _remove_if_empty(hydra_dir)
        fail(f"{err}\nNothing was trained. Fix the value(s) above on the command line or in the config.")
    if run_dir != hydra_dir:
        _remove_if_empty(hydra_dir)  # resuming elsewhere: Hydra's fresh folder stays unused
    try:
        with run_folder.RunLock(run_dir):
            saved = resume_state(config, resume_from)  # checked before anything is written
            write_atomic(run_dir / "config.yaml", lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True)))
            _setup_logging(run_dir / "train.log")
            return train(config, run_dir, saved)
    except (ConfigError, run_folder.RunFolderError) as err:
        fail(f"{err}\nNothing was trained.")
    except (DatasetMissing, CheckpointError, FloatingPointError) as err:
        logging.getLogger("sensreg").error("run failed: %s", err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # One diverging lambda must not cancel the rest of a sweep; its summary says failed.
            err_console.print(f"[bold red]job failed, the sweep goes on:[/bold red] {err} (run folder: {run_dir})")
            return None
        fail(f"{err} (run folder: {run_dir})", code=1)
    except Interrupted as err:
        fail(f"{err}: the run folder {run_dir} holds a checkpoint and says status: interrupted. "
             f"Continue it with `sensreg train <the same overrides> trainer.resume={run_dir}`.",
             code=err.exit_code)
    except KeyboardInterrupt:
        fail(f"interrupted at once; the run folder {run_dir} says status: interrupted and keeps its "
             f"last checkpoint, if it had one.", code=130)
    except OSError as err:
        fail(f"could not read or write a file ({err}). Every file of the run folder {run_dir} is "
             f"replaced only by a complete new version, so what was there before is intact; free "
             f"space or fix the permissions, then continue with trainer.resume={run_dir}.", code=1)


def _remove_if_empty(run_dir: Path) -> None:
    """A config rejected before any work leaves no run folder behind (only Hydra's .hydra/)."""
    if run_dir.is_dir() and all(p.name == ".hydra" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in list(run_dir.parents)[:3]:  # the dated folders above it, if now empty
            try:
                parent.rmdir()
            except OSError:
                break


def _setup_logging(log_file: Path) -> None:
    """One line per event on stdout and in the run's train.log (reset for each job of a sweep)."""
    logger = logging.getLogger("sensreg")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # Hydra configures logging again for each job of a sweep (dictConfig with
    # disable_existing_loggers), which would silence this logger from the second job on.
    logger.disabled = False
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(log_file, encoding="utf-8")):
        handler.setFormatter(fmt)
        logger.addHandler(handler)


# --- eval --------------------------------------------------------------------------------------

def run_eval(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        print("usage: sensreg eval CHECKPOINT [data.KEY=VALUE ...] [trainer.device=cpu|cuda|auto] [--json]\n\n"
              "Rebuilds the model saved in CHECKPOINT (a run folder's model.pt), evaluates it on the test\n"
              "split of the dataset it was trained on, and counts its non-zero parameters. data.* overrides\n"
              "change how the data is found (e.g. data.root=/elsewhere). Where the checkpoint sits in a\n"
              "run folder, the figures are compared with that run's summary.json.")
        return
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    paths = [a for a in args if "=" not in a]
    if len(paths) != 1:
        fail("sensreg eval takes exactly one checkpoint path (a run folder's model.pt), then optional "
             "data.KEY=VALUE overrides; e.g. `sensreg eval outputs/runs/.../model.pt data.root=data`.")
    overrides, device = {}, "auto"
    import yaml

    for a in args:
        if "=" not in a:
            continue
        key, value = a.split("=", 1)
        if key.startswith("data."):
            overrides[key[5:]] = yaml.safe_load(value)
        elif key == "trainer.device":
            device = value
        else:
            fail(f"sensreg eval accepts data.KEY=VALUE and trainer.device=... overrides, not {key!r}.")

    from .checkpoint import CheckpointError
    from .config import check_device, resolve_device
    from .data import DatasetMissing
    from .evaluate import evaluate_checkpoint

    problem = check_device(device)
    if problem:
        fail(problem)
    try:
        result = evaluate_checkpoint(paths[0], overrides, resolve_device(device))
    except (CheckpointError, DatasetMissing) as err:
        fail(str(err))
    result["matches_summary"] = _compare_with_summary(Path(paths[0]), result)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_eval(result)


def _compare_with_summary(checkpoint: Path, result: dict) -> bool | None:
    """Whether the run folder's summary.json holds exactly these figures; None without one."""
    summary_path = checkpoint.parent / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return None
    if "test_error" not in summary:
        return None
    return (summary["test_error"] == result["test_error"]
            and summary.get("remaining_pct") == result["sparsity"]["prunable"]["remaining_pct"])


def _print_eval(result: dict) -> None:
    from .report import layer_table

    console = Console(highlight=False)
    s = result["sparsity"]
    top5 = f", top-5 error {100 * result['test_top5_error']:.2f}%" if "test_top5_error" in result else ""
    console.print(f"{result['model']} on {result['data']} test set: top-1 error "
                  f"{100 * result['test_error']:.2f}%{top5}, loss {result['test_loss']:.4f}")
    console.print(f"remaining {s['prunable']['remaining_pct']:.3f}% of prunable parameters "
                  f"({s['prunable']['compression']:.1f}x), {s['all']['remaining_pct']:.3f}% of all "
                  f"({s['all']['compression']:.1f}x); FLOPs left {s['flops']['remaining_pct']:.2f}%")
    console.print(layer_table(s))
    match = result["matches_summary"]
    if match is not None:
        console.print("summary.json beside the checkpoint: " + ("figures match exactly" if match else
                      "[bold red]figures differ[/bold red] (different data, device or a modified checkpoint)"))
