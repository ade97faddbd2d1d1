"""A saved model re-evaluated on its own (``sensreg eval``): model.pt rebuilt from what it holds,
evaluated on the test split of its dataset, its sparsity and compacted network counted, and the
figures set beside the summary.json of the run folder it sits in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sensreg.data import load_test_split
from sensreg.data.config import DataConfig, data_problems
from sensreg.errors import few_names
from sensreg.method.pruning import sparsity_stats
from sensreg.records.checkpoint import CheckpointError, load_checkpoint, saved_network
from sensreg.run.config import ConfigError
from sensreg.run.evaluate import evaluate
from sensreg.records.folder import MODEL_NAME, RunFolder
from sensreg.records.structure import network_structure


def reevaluate(path: str | Path, overrides: dict[str, Any] | None = None,
               device: str | torch.device = "cpu") -> dict[str, Any]:
    """``evaluate_checkpoint`` of the model.pt at ``path`` (or of the run folder ``path``'s), with
    ``matches_summary``: whether the summary.json beside it holds the same figures (None where
    there is none). Raises CheckpointError for a folder that is not a finished run."""
    checkpoint = Path(path)
    if checkpoint.is_dir():  # a run folder: its final model
        checkpoint = _final_model(RunFolder(checkpoint))
    summary = RunFolder(checkpoint.parent).read().summary
    result = evaluate_checkpoint(checkpoint, overrides, device, summary)
    result["matches_summary"] = _compare_with_summary(summary, result)
    return result


def _final_model(folder: RunFolder) -> Path:
    """The model.pt of a finished run folder."""
    if not folder.model_path.is_file() and not folder.summary_path.is_file():
        raise CheckpointError(
            f"{folder.path} is not a run folder: it holds neither a {MODEL_NAME} nor a summary.json. "
            f"Give sensreg eval a run folder (outputs/runs/<date>/<run>) or a {MODEL_NAME} file.")
    if not folder.model_path.is_file():
        raise CheckpointError(
            f"the run folder {folder.path} has no {MODEL_NAME}: the run has not finished (its summary.json "
            f"says how far it got; continue it with `sensreg train ... trainer.resume={folder.path}`).")
    return folder.model_path


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


def _compare_with_summary(summary: dict | None, result: dict) -> bool | None:
    """Whether the run folder's summary.json holds exactly these figures (and the compacted
    network's, where it records them); None without one."""
    if summary is None or "test_error" not in summary:
        return None
    same_structure = not isinstance(summary.get("structure"), dict) or all(
        summary["structure"].get(key) == result["structure"].get(key) for key in ("params", "macs", "units"))
    return (summary["test_error"] == result["test_error"]
            and summary.get("remaining_pct") == result["sparsity"]["prunable"]["remaining_pct"] and same_structure)
