"""`sensreg eval`: a saved model.pt rebuilt and re-evaluated on its test split, on its own, and
set beside its run's summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sensreg.commands.console import fail, user_errors
from sensreg.data import load_test_split
from sensreg.method.pruning import sparsity_stats
from sensreg.run.checkpoint import CheckpointError, load_checkpoint, saved_network
from sensreg.run.config import DataConfig
from sensreg.run.evaluate import evaluate


def evaluate_checkpoint(path: str | Path, overrides: dict[str, Any] | None = None,
                        device: str | torch.device = "cpu") -> dict[str, Any]:
    """Rebuild the model saved at ``path`` and recompute its test error and sparsity.

    ``overrides`` replace entries of the data config the checkpoint was trained with (e.g. a
    different ``root``). Uses nothing from the run folder but the checkpoint itself.
    """
    ckpt = load_checkpoint(path)
    data_cfg = dict(ckpt["config"]["data"])
    for key, value in (overrides or {}).items():
        if key not in data_cfg:
            raise CheckpointError(f"data.{key} is not a data setting of this checkpoint; "
                                  f"known: {', '.join(sorted(data_cfg))}.")
        data_cfg[key] = value
    data = DataConfig(**data_cfg)
    test, num_classes, input_shape = load_test_split(data.name, data.root, device, **data.loader_options())
    model = saved_network(ckpt)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit model {ckpt['model_name']}: {err}") from None
    model.to(device)
    result = {"checkpoint": str(path), "data": data.name, "model": ckpt["model_name"],
              "num_classes": ckpt["num_classes"]}
    result.update({f"test_{k}": v for k, v in evaluate(model, test, data.eval_batch_size).items()})
    prunable = list(ckpt["masks"])
    result["sparsity"] = sparsity_stats(model, tuple(ckpt["input_shape"]), prunable)
    return result



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

    from sensreg.run.config import check_device, resolve_device
    from sensreg.commands.reevaluate import evaluate_checkpoint
    from sensreg.run.folder import MODEL_NAME, RunFolder

    problem = check_device(device)
    if problem:
        fail(problem)
    checkpoint = Path(paths[0])
    if checkpoint.is_dir():  # a run folder: its final model
        folder = RunFolder(checkpoint)
        if not folder.model_path.is_file() and not folder.summary_path.is_file():
            fail(f"{checkpoint} is not a run folder: it holds neither a {MODEL_NAME} nor a summary.json. "
                 f"Give sensreg eval a run folder (outputs/runs/<date>/<run>) or a {MODEL_NAME} file.")
        if not folder.model_path.is_file():
            fail(f"the run folder {checkpoint} has no {MODEL_NAME}: the run has not finished (its summary.json "
                 f"says how far it got; continue it with `sensreg train ... trainer.resume={checkpoint}`).")
        checkpoint = folder.model_path
    with user_errors():
        result = evaluate_checkpoint(checkpoint, overrides, resolve_device(device))
    result["matches_summary"] = _compare_with_summary(checkpoint, result)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_eval(result)


def _compare_with_summary(checkpoint: Path, result: dict) -> bool | None:
    """Whether the run folder's summary.json holds exactly these figures; None without one."""
    from sensreg.run.folder import RunFolder

    summary = RunFolder(checkpoint.parent).read().summary
    if summary is None or "test_error" not in summary:
        return None
    return (summary["test_error"] == result["test_error"]
            and summary.get("remaining_pct") == result["sparsity"]["prunable"]["remaining_pct"])


def _print_eval(result: dict) -> None:
    from sensreg.run.tables import layer_table, stdout_console

    console = stdout_console(highlight=False)  # the terminal's width, or 80 columns in a pipe
    s = result["sparsity"]
    from sensreg.run.report import shows_top5

    # (--json keeps the top-5 error whatever the classes: it is a measurement, not a display)
    top5 = f", top-5 error {100 * result['test_top5_error']:.2f}%" if "test_top5_error" in result \
        and shows_top5(result.get("num_classes")) else ""
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


