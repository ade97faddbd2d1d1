"""`sensreg export`: a finished run's pruned network, compacted (``method.compaction``), written
as files that run without sensreg, each checked against the run.

- ``model.pt2``: ``torch.export``'s program (``torch.export.load(path).module()`` runs it);
- ``model.onnx`` (with the ``export`` extra: onnx, onnxruntime, onnxscript), for ONNX Runtime;
- ``export.json``: parameters and multiply-adds (dense, nonzero, compacted), the units each layer
  keeps, the test error of the run, of the compacted network and of each file loaded back, and
  the inference speed (``speed.py``) of the dense and the compacted network in torch (``dense``,
  ``compact``) and in ONNX Runtime (``onnx_dense``, ``onnx``).

Both files take a batch of any size. The folder is written under a temporary name and renamed
when complete, so that a failure or a stop leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sensreg.data import batches, load_test_split
from sensreg.errors import UserError, first_line
from sensreg.run import speed as timing
from sensreg.records.checkpoint import load_checkpoint, saved_network
from sensreg.data.config import DataConfig, data_problems
from sensreg.run.environment import versions
from sensreg.records.folder import MODEL_NAME, RunFolder, writer_gone
from sensreg.records.structure import EXAMPLE_SAMPLES, compact_network

EXPORT_NAME, PT2_NAME, ONNX_NAME = "export.json", "model.pt2", "model.onnx"
DEFAULT_FOLDER = "export"  # inside the run folder, unless --out says otherwise
ONNX_EXTRA = "pip install -e '.[export]' (or pip install onnx onnxruntime onnxscript)"


class ExportError(UserError, ValueError):
    """A run folder or output folder that cannot be exported from or to; the message says why."""


@dataclass
class Exported:
    folder: Path
    record: dict[str, Any]  # export.json
    notes: list[str] = field(default_factory=list)  # one line each: what was left out, and why

    @property
    def matches_run(self) -> bool:
        """Whether every file's test error equals the run's."""
        errors = self.record["test_error"]
        return all(v == errors["run"] for k, v in errors.items() if k != "run")


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, threads: int = 1, speed: bool = True,
               data_overrides: dict[str, Any] | None = None) -> Exported:
    """Compact the model of the finished run in ``run_dir`` and write ``out_dir`` (default:
    RUN/export), checked as the module docstring says. Raises ExportError (or CheckpointError)
    for a folder it cannot export, before anything is written."""
    folder = _finished_run(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else folder.path / DEFAULT_FOLDER
    _check_out(out)
    ckpt = load_checkpoint(folder.model_path)
    data = _data_config(ckpt["config"]["data"], data_overrides)
    test, _, _ = load_test_split(data.name, data.root, "cpu", **data.loader_options())
    dense = saved_network(ckpt)
    dense.load_state_dict(ckpt["state_dict"])
    dense.eval()
    compaction = compact_network(dense, test, ckpt["masks"])
    example = next(iter(batches(test, EXAMPLE_SAMPLES)))[0]
    images = next(iter(batches(test, timing.BATCH)))[0]

    summary = folder.read().summary or {}
    notes: list[str] = [f"not compacted: {note}" for note in compaction.not_compacted]
    work = _temporary_folder(out)
    try:
        runners = {"compact": timing.torch_runner(compaction.model)}
        write_pt2(compaction.model, example, work / PT2_NAME)
        runners["pt2"] = timing.torch_runner(torch.export.load(work / PT2_NAME).module())
        onnx_problem = write_onnx(compaction.model, example, work / ONNX_NAME)
        if onnx_problem is None:
            runners["onnx"] = timing.onnx_runner(timing.onnx_session(work / ONNX_NAME, threads))
        else:
            notes.append(onnx_problem)
        test_error = {"run": summary.get("test_error")}
        for name, run in runners.items():
            test_error[name] = _error(run, test, data.eval_batch_size)
        record = {
            "run": str(folder.path), "model": ckpt["model_name"], "data": data.name,
            **{k: v for k, v in compaction.to_dict().items()},
            "test_error": test_error,
            "files": {"pt2": PT2_NAME, **({"onnx": ONNX_NAME} if "onnx" in runners else {})},
            "versions": versions(),
        }
        if speed:
            record["speed"] = _speed(dense, runners, example, images, threads, work)
        (work / EXPORT_NAME).write_text(json.dumps(record, indent=2) + "\n")
        os.rename(work, out)  # (out was checked not to exist; a folder made since makes this fail)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Exported(out, record, notes)


def _data_config(saved: dict[str, Any], overrides: dict[str, Any] | None) -> DataConfig:
    """The run's data settings with ``overrides`` (``data.KEY=VALUE`` of the command line),
    each checked as the train command checks it."""
    unknown = sorted(set(overrides or {}) - set(saved))
    if unknown:
        raise ExportError(f"data.{unknown[0]} is not a data setting of this run; known: "
                          f"{', '.join(sorted(saved))}.")
    data = DataConfig(**{**saved, **(overrides or {})})
    problems = data_problems(data) if overrides else []
    if problems:
        raise ExportError("invalid data override: " + " ".join(problems))
    return data


def _speed(dense: nn.Module, runners: dict, example: Tensor, images: Tensor, threads: int,
           work: Path) -> dict[str, Any]:
    """Inference speed of the dense and the compacted network in torch and, where the export has
    an ONNX file, both in ONNX Runtime (the dense one from a file that is not kept)."""
    measured = {"dense": timing.torch_runner(dense), "compact": runners["compact"]}
    if "onnx" in runners:
        write_onnx(dense, example, work / "dense.onnx")
        measured["onnx_dense"] = timing.onnx_runner(timing.onnx_session(work / "dense.onnx", threads))
        measured["onnx"] = runners["onnx"]
        (work / "dense.onnx").unlink()
    return timing.measure(measured, images, threads)


def _finished_run(run_dir: Path) -> RunFolder:
    folder = RunFolder.given(run_dir, "export", ExportError)
    if not writer_gone(folder.path):
        raise ExportError(f"the run in {run_dir} is still training (its lock file is held by a live process); "
                          f"export it once it has finished.")
    if not folder.model_path.is_file():
        raise ExportError(f"the run folder {run_dir} has no {MODEL_NAME}: the run has not finished (its "
                          f"summary.json says how far it got; continue it with trainer.resume={run_dir}).")
    status = (folder.read().summary or {}).get("status")
    if status not in (None, "completed"):  # (None: a run from before summaries recorded it)
        raise ExportError(f"the run in {run_dir} did not complete (its summary.json says {status!r}), so its "
                          f"{MODEL_NAME} is not the run's result; continue it with trainer.resume={run_dir}.")
    return folder


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise ExportError(f"the output folder {out} exists already; sensreg export writes a new folder and never "
                          f"writes over one. Remove it, or give another with --out DIR.")
    parent = out.parent
    if not parent.is_dir():
        raise ExportError(f"the output folder's parent {parent} does not exist; make it first, or give "
                          f"another --out DIR.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write in {parent} (permission denied), where the output folder {out.name} "
                          f"would go; give a folder you can write in with --out DIR.")


def _temporary_folder(out: Path) -> Path:
    """The folder the export is written in, beside ``out``, renamed to it when complete."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise ExportError(f"cannot write in {out.parent} ({err.strerror or err}), where the output folder "
                          f"{out.name} would go; give a folder you can write in with --out DIR.") from None


def write_pt2(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export's program of ``model``, its batch size left free."""
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, path)
    except Exception as err:  # noqa: BLE001 - whatever the exporter raises is the model's limit
        raise ExportError(f"torch.export cannot take this network ({type(err).__name__}: "
                          f"{first_line(err, 300)}); nothing was written.") from None


def write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> str | None:
    """model.onnx, its batch size left free; None when written, else the reason it was not (the
    export extra not installed). A network the exporter cannot take is an ExportError."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        return f"{ONNX_NAME} not written: ONNX export needs the export extra ({err.name} is missing): {ONNX_EXTRA}"
    try:
        # The exporter reports its progress on stdout and warns about what it simplifies.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: "batch"},), dynamo=True,
                              external_data=False)  # one self-contained file (weights inside: under 2 GB)
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"the ONNX exporter cannot take this network ({type(err).__name__}: "
                          f"{first_line(err, 300)}); nothing was written.") from None
    return None


def _error(run, split, batch_size: int) -> float:
    """Top-1 error of ``run`` (images -> logits) on ``split``, counted exactly as a run does."""
    wrong = 0
    for x, y in batches(split, batch_size):
        wrong += int((run(x).argmax(dim=1) != y).sum())
    return wrong / len(split)

