"""`sensreg eval`: a saved model.pt rebuilt and re-evaluated on its test split, on its own, and
set beside its run's summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sensreg.commands.console import fail, user_errors
from sensreg.data import load_test_split
from sensreg.errors import few_names
from sensreg.method.pruning import sparsity_stats
from sensreg.run.checkpoint import CheckpointError, load_checkpoint, saved_network
from sensreg.run.config import ConfigError, DataConfig, data_problems
from sensreg.run.evaluate import evaluate
from sensreg.run.structure import network_structure


def evaluate_checkpoint(path: str | Path, overrides: dict[str, Any] | None = None,
                        device: str | torch.device = "cpu", summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild the model saved at ``path`` and recompute its test error and sparsity.

    ``overrides`` replace entries of the data config the checkpoint was trained with (e.g. a
    different ``root``). ``summary``: the summary.json of the run folder the checkpoint sits in,
    whose network it must be. Uses nothing else from the run folder.
    """
    ckpt = load_checkpoint(path)
    data_cfg = dict(ckpt["config"]["data"])
    for key, value in (overrides or {}).items():
        if key not in data_cfg:
            raise CheckpointError(f"data.{key} is not a data setting of this checkpoint; "
                                  f"known: {', '.join(sorted(data_cfg))}.")
        data_cfg[key] = value
    data = DataConfig(**data_cfg)
    problems = data_problems(data)
    if problems and overrides:  # (a checkpoint's own data section passed these checks when it trained)
        raise ConfigError("Invalid data override:\n  - " + "\n  - ".join(problems))
    test, num_classes, input_shape = load_test_split(data.name, data.root, device, **data.loader_options())
    model = saved_network(ckpt)
    _check_weights(path, ckpt["state_dict"], model)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit model {ckpt['model_name']}: {err}") from None
    if summary is not None:
        _check_against_summary(path, ckpt["model_name"], model, summary)
    model.to(device)
    result = {"checkpoint": str(path), "data": data.name, "model": ckpt["model_name"],
              "num_classes": ckpt["num_classes"]}
    result.update({f"test_{k}": v for k, v in evaluate(model, test, data.eval_batch_size).items()})
    prunable = list(ckpt["masks"])
    result["sparsity"] = sparsity_stats(model, tuple(ckpt["input_shape"]), prunable)
    result["structure"] = network_structure(model, test, ckpt["masks"])
    return result


def _check_weights(path: str | Path, state: dict[str, Any], model: torch.nn.Module) -> None:
    """Every float tensor of the network is saved as floats, all finite: load_state_dict would
    copy integers or nan into the network without a word, and the figures would mean nothing."""
    expected = model.state_dict()
    bad = []
    for name, tensor in state.items():
        want = expected.get(name)
        if not isinstance(tensor, torch.Tensor):
            bad.append(f"{name} is a {type(tensor).__name__}, not a tensor")
        elif want is not None and want.is_floating_point() and not tensor.is_floating_point():
            bad.append(f"{name} holds {str(tensor.dtype).removeprefix('torch.')} values, not floats")
        elif tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(f"{name} holds nan or inf")
    if bad:
        raise CheckpointError(f"checkpoint {path} holds weights no trained network has: {few_names(bad)}. "
                              f"A finished run writes finite float weights; this file was changed or "
                              f"written elsewhere. Evaluate the model.pt of a finished run.")


def _check_against_summary(path: str | Path, model_name: str, model: torch.nn.Module,
                           summary: dict[str, Any]) -> None:
    """The network saved in a run folder's model.pt is the one its summary.json describes: the
    same registered network, with the same parameters of the same shapes."""
    differences = []
    if isinstance(summary.get("model"), str) and summary["model"] != model_name:
        differences.append(f"it is {model_name}, the summary's run trained {summary['model']}")
    layers = (summary.get("sparsity") or {}).get("layers") if isinstance(summary.get("sparsity"), dict) else None
    if isinstance(layers, list):
        said = {r.get("name"): r.get("shape") for r in layers if isinstance(r, dict)}
        have = {name: list(p.shape) for name, p in model.named_parameters()}
        for name in sorted(set(said) | set(have)):
            if name not in have:
                differences.append(f"it has no {name}")
            elif name not in said:
                differences.append(f"{name} is not in the summary")
            elif said[name] != have[name]:
                differences.append(f"{name} is {'x'.join(map(str, have[name]))} here, "
                                   f"{'x'.join(map(str, said[name] or []))} in the summary")
    if differences:
        raise CheckpointError(
            f"checkpoint {path} is not the network that summary.json beside it describes: "
            f"{few_names(differences, sep='; ')}. The file was replaced, or copied from another run: "
            f"evaluate the model.pt of its own run folder (or a copy outside any run folder).")


def run_eval(args: list[str]) -> None:
    """`sensreg eval`; Ctrl-C is one line and exit code 130 (eval writes nothing)."""
    try:
        _run_eval(args)
    except KeyboardInterrupt:
        fail("interrupted; sensreg eval writes no file, so nothing is left half-done. Run it again "
             "to get the figures.", code=130)


def _run_eval(args: list[str]) -> None:
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
    summary = RunFolder(checkpoint.parent).read().summary
    with user_errors():
        result = evaluate_checkpoint(checkpoint, overrides, resolve_device(device), summary)
    result["matches_summary"] = _compare_with_summary(summary, result)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_eval(result)


def _compare_with_summary(summary: dict | None, result: dict) -> bool | None:
    """Whether the run folder's summary.json holds exactly these figures (and the compacted
    network's, where it records them); None without one."""
    if summary is None or "test_error" not in summary:
        return None
    same_structure = not isinstance(summary.get("structure"), dict) or all(
        summary["structure"].get(key) == result["structure"].get(key) for key in ("params", "macs", "units"))
    return (summary["test_error"] == result["test_error"]
            and summary.get("remaining_pct") == result["sparsity"]["prunable"]["remaining_pct"] and same_structure)


def _print_eval(result: dict) -> None:
    from sensreg.run.structure import structure_lines
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
    console.print(layer_table(s, result.get("structure")))
    for line in structure_lines(result.get("structure")):
        console.print(line)
    match = result["matches_summary"]
    if match is not None:
        console.print("summary.json beside the checkpoint: " + ("figures match exactly" if match else
                      "[bold red]figures differ[/bold red] (different data, device or a modified checkpoint)"))


