"""`sensreg export`: a finished run's compacted network written as files that run without
sensreg (model.pt2, model.onnx), each loaded back with the run's test error; export.json's
figures agree with the run's summary; what cannot be exported is one line, exit 2, and nothing
is left behind; the speed figures are measured for every runtime written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_S, run_in_process, sensreg
from sensreg.records.folder import LOCK_NAME

# A tiny finished run: LeNet-300-100 on generated 28x28 images, two epochs of magnitude pruning
# to 20x (which leaves some inputs and fc1 units without a weight: 28 % test error), on the CPU.
TINY = ["~experiment", "data=synthetic", "data.num_train=300", "data.num_test=100", "trainer.epochs=2",
        "trainer.batch_size=50", "trainer.device=cpu", "trainer.progress=false", "sens=none", "prune=gmp",
        "prune.target=20x", "prune.every=1"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    done = sensreg("train", *TINY, f"hydra.run.dir={run}", cwd=run.parent, module=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    return run


@pytest.fixture
def quick_timing(monkeypatch):
    """The speed measurement cut to a few repeats (its figures are checked for shape, not value)."""
    from sensreg.run import speed

    monkeypatch.setattr(speed, "MIN_REPEATS", 2)
    monkeypatch.setattr(speed, "MIN_SECONDS", 0.0)


def entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_an_export_writes_files_that_equal_the_run_and_records_its_figures(finished_run, tmp_path, quick_timing,
                                                                           in_process_cli, capsys):
    out = tmp_path / "exported"
    assert run_in_process("export", str(finished_run), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert entries(out) == {"model.pt2", "model.onnx", "export.json"}
    assert entries(tmp_path) == {"exported"}  # the temporary folder became it
    record = json.loads((out / "export.json").read_text())
    summary = json.loads((finished_run / "summary.json").read_text())

    # The test error of the compacted network and of each file loaded back is the run's, exactly.
    errors = record["test_error"]
    assert set(errors) == {"run", "compact", "pt2", "onnx"}
    assert errors["run"] == summary["test_error"]
    assert all(value == errors["run"] for value in errors.values())
    assert "(all equal)" in printed

    # Costs: as the run recorded them at its end (the same masks, compacted the same way).
    for key in ("params", "macs"):
        assert set(record[key]) == {"dense", "nonzero", "compact"}
        assert record[key] == summary["structure"][key]
        assert record[key]["compact"] <= record[key]["dense"]
    assert record["params"]["dense"] == 266_610  # LeNet-300-100 on 28x28 inputs
    assert record["units"] == summary["structure"]["units"]
    assert [total for _, total in record["units"].values()] == [300, 100, 10]
    assert all(0 < kept <= total for kept, total in record["units"].values())
    assert record["params"]["compact"] < record["params"]["dense"]  # some units have gone

    # Speed: every runtime written, at batch 1 and batch 256, on the threads asked for.
    speed = record["speed"]
    assert speed["threads"] == 1 and speed["batch"] == 100  # (the test split has 100 images)
    for figure in ("batch1_us", "batch256_per_s"):
        assert set(speed[figure]) == {"dense", "compact", "onnx_dense", "onnx"}
        assert all(value > 0 for value in speed[figure].values())
    assert "latency, batch 1, torch" in printed and "ONNX Runtime" in printed


def test_the_files_run_without_sensreg_and_give_the_compacted_networks_logits(finished_run, tmp_path,
                                                                                in_process_cli):
    import torch

    from sensreg.data import batches, load_test_split
    from sensreg.records.checkpoint import load_checkpoint, saved_network
    from sensreg.data.config import DataConfig
    from sensreg.records.structure import compact_network

    out = tmp_path / "exported"
    assert run_in_process("export", str(finished_run), "--out", str(out), "--no-speed") == 0
    ckpt = load_checkpoint(finished_run / "model.pt")
    data = DataConfig(**ckpt["config"]["data"])
    test, _, _ = load_test_split(data.name, data.root, "cpu", **data.loader_options())
    images = next(iter(batches(test, 100)))[0]
    torch.save(images, tmp_path / "images.pt")
    dense = saved_network(ckpt)
    dense.load_state_dict(ckpt["state_dict"])
    dense.eval()
    with torch.no_grad():
        expected = compact_network(dense, test, ckpt["masks"]).model(images)
        masked = dense(images)
    assert torch.equal(expected.argmax(1), masked.argmax(1))

    # A fresh Python in which `import sensreg` fails: torch and ONNX Runtime alone run the files.
    script = (
        "import sys; sys.modules['sensreg'] = None\n"
        "import numpy as np, onnxruntime as ort, torch\n"
        "x = torch.load('images.pt')\n"
        "program = torch.export.load('exported/model.pt2').module()\n"
        "torch.save(program(x), 'pt2.pt')\n"
        "session = ort.InferenceSession('exported/model.onnx', providers=['CPUExecutionProvider'])\n"
        "torch.save(torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]), 'onnx.pt')\n"
        "program(x[:3]); session.run(None, {'images': x[:3].numpy()})  # any batch size\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""}, timeout=HANG_S)
    assert done.returncode == 0, done.stderr
    assert torch.allclose(torch.load(tmp_path / "pt2.pt"), expected, atol=1e-5)
    assert torch.allclose(torch.load(tmp_path / "onnx.pt"), expected, atol=1e-4)


def test_without_the_export_extra_the_pt2_is_written_and_one_line_says_how_to_get_onnx(
        finished_run, tmp_path, monkeypatch, in_process_cli, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` raises ImportError
    out = tmp_path / "exported"
    assert run_in_process("export", str(finished_run), "--out", str(out), "--no-speed") == 0
    assert entries(out) == {"model.pt2", "export.json"}
    record = json.loads((out / "export.json").read_text())
    assert set(record["test_error"]) == {"run", "compact", "pt2"} and "speed" not in record
    printed = " ".join(capsys.readouterr().out.split())  # (the console wraps at 80 columns)
    assert "model.onnx not written" in printed and "pip install -e '.[export]'" in printed


def _copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to, ignore=shutil.ignore_patterns("export*"))
    return to


@pytest.mark.parametrize("case, expected", [
    ("not_a_folder", "is not a folder"),
    ("not_a_run", "is not a run folder"),
    ("no_model", "has no model.pt"),
    ("damaged_model", "model.pt"),
    ("still_training", "is still training"),
    ("interrupted", "did not complete"),
    ("out_exists", "exists already"),
    ("out_parent_missing", "does not exist"),
    ("out_unwritable", "cannot write in"),
    ("torch_export_fails", "torch.export cannot take this network"),
    ("onnx_export_fails", "the ONNX exporter cannot take this network"),
])
def test_what_cannot_be_exported_is_one_line_exit_2_and_nothing_is_left(finished_run, tmp_path, monkeypatch,
                                                                        in_process_cli, capsys, case, expected):
    run = _copy_run(finished_run, tmp_path / "run")
    out = tmp_path / "exported"
    if case == "not_a_folder":
        run = tmp_path / "missing"
    elif case == "not_a_run":
        run = tmp_path / "empty"
        run.mkdir()
    elif case == "no_model":
        (run / "model.pt").unlink()
    elif case == "damaged_model":
        data = (run / "model.pt").read_bytes()
        (run / "model.pt").write_bytes(data[: len(data) // 2])
    elif case == "still_training":
        (run / LOCK_NAME).write_text(f"{os.getpid()} {os.uname().nodename}\n")  # a live writer
    elif case == "interrupted":
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    elif case == "out_exists":
        out.mkdir()
        (out / "mine.txt").write_text("the user's")
    elif case == "out_parent_missing":
        out = tmp_path / "no" / "such" / "exported"
    elif case == "out_unwritable":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs /proc, where no one can make a folder")
        out = Path("/proc/exported")
    elif case == "torch_export_fails":
        import torch

        def refuse(*args, **kwargs):
            raise RuntimeError("data-dependent control flow\nmore detail")
        monkeypatch.setattr(torch.export, "export", refuse)
    elif case == "onnx_export_fails":
        import torch

        def refuse(*args, **kwargs):
            raise RuntimeError("unsupported operator")
        monkeypatch.setattr(torch.onnx, "export", refuse)
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}

    assert run_in_process("export", str(run), "--out", str(out), "--no-speed") == 2
    printed = capsys.readouterr()
    message = (printed.err + printed.out).strip()
    assert expected in message
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert {p.relative_to(tmp_path) for p in tmp_path.rglob("*")} == before  # nothing written, nothing left
    if case == "out_exists":
        assert (out / "mine.txt").read_text() == "the user's"


def test_ctrl_c_during_an_export_leaves_nothing_and_exits_130(finished_run, tmp_path, monkeypatch,
                                                              in_process_cli, capsys):
    from sensreg.run import export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(export, "_error", interrupted)  # while the files are checked, after they are written
    assert run_in_process("export", str(finished_run), "--out", str(tmp_path / "exported"), "--no-speed") == 130
    assert "nothing was left half-written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_default_folder_is_inside_the_run_and_a_second_export_is_refused(finished_run, tmp_path,
                                                                              in_process_cli, capsys):
    run = _copy_run(finished_run, tmp_path / "run")
    assert run_in_process("export", str(run), "--no-speed") == 0
    assert entries(run / "export") >= {"model.pt2", "export.json"}
    assert run_in_process("export", str(run), "--no-speed") == 2
    assert "exists already" in capsys.readouterr().err


@pytest.mark.slow
# (torchvision's resnet18 and mobilenet_v3_small, vgg16_cifar and a timm ViT export as these do,
# half a minute to a minute each: their compaction is tested exactly in test_compaction.py, the
# files' formats here, on a residual network with batch norm and on the user's own module.)
@pytest.mark.parametrize("overrides", [
    ["model=resnet20", "data.shape=[3,32,32]"],
    ["model=custom", "model.factory=export_nets:small_cnn", "data.shape=[3,32,32]"],
], ids=["resnet20", "custom"])
def test_any_classifier_exports_with_the_runs_test_error(tmp_path, quick_timing, in_process_cli, monkeypatch,
                                                        overrides):
    (tmp_path / "export_nets.py").write_text(
        "from torch import nn\n\n\ndef small_cnn(num_classes, input_shape):\n"
        "    return nn.Sequential(nn.Conv2d(input_shape[0], 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),\n"
        "                         nn.Flatten(), nn.Linear(8 * 15 * 15, 32), nn.ReLU(),\n"
        "                         nn.Linear(32, num_classes))\n")
    monkeypatch.chdir(tmp_path)  # the user's module beside the command
    monkeypatch.delitem(sys.modules, "export_nets", raising=False)
    run, out = tmp_path / "run", tmp_path / "exported"
    tiny = ["~experiment", "data=synthetic", "data.num_train=44", "data.num_test=20", "trainer.epochs=1",
            "trainer.batch_size=10", "trainer.device=cpu", "trainer.progress=false", "prune=gmp",
            "prune.target=20x", "prune.every=1"]
    assert run_in_process("train", *tiny, *overrides, f"hydra.run.dir={run}") == 0
    assert run_in_process("export", str(run), "--out", str(out), "--no-speed") == 0  # (speed: the first test)
    record = json.loads((out / "export.json").read_text())
    assert len(set(record["test_error"].values())) == 1, record["test_error"]
    assert record["params"]["nonzero"] < record["params"]["dense"] / 10


@pytest.mark.parametrize("override, expected", [
    ("data.eval_batch_size=0", "data.eval_batch_size=0 must be a number >= 1"),
    ("data.eval_batch_size=abc", "data.eval_batch_size='abc' must be"),
    ("data.nonsense=1", "data.nonsense is not a data setting of this run"),
])
def test_bad_data_overrides_are_refused_before_anything_is_written(finished_run, tmp_path, in_process_cli, capsys,
                                                                   override, expected):
    assert run_in_process("export", str(finished_run), "--out", str(tmp_path / "x"), override) == 2
    assert expected in " ".join(capsys.readouterr().err.split())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override, expected", [
    ("data.eval_batch_size=-1", "data.eval_batch_size=-1 must be a number >= 1"),
    ("data.eval_batch_size=0", "data.eval_batch_size=0 must be a number >= 1"),
    ("data.eval_batch_size=abc", "data.eval_batch_size='abc' must be"),
])
def test_eval_checks_its_data_overrides_as_train_does(finished_run, in_process_cli, capsys, override, expected):
    assert run_in_process("eval", str(finished_run), override) == 2
    message = " ".join(capsys.readouterr().err.split())
    assert expected in message and "Traceback" not in message


def test_an_empty_data_root_is_refused(tmp_path, in_process_cli, capsys):
    from sensreg.data.config import DataConfig, data_problems

    assert any("data.root='' must name the folder" in p for p in data_problems(DataConfig(name="mnist", root="")))
    assert data_problems(DataConfig(name="synthetic", root="")) == []  # generated data reads no folder
