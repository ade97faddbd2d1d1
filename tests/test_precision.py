"""Mixed precision (trainer.precision) and torch.compile (trainer.compile), on the CPU.

bfloat16 is tested for real on the CPU. float16 is refused on the CPU by the config (it is for
CUDA), but ``TrainStep`` itself runs it here with a CPU GradScaler, which tests the loss-scaling
logic: the scaled gradient, the unscaled sensitivities, the skipped step on overflow.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from sensreg.records.checkpoint import load_checkpoint
from sensreg.run.compiling import CompileError
from sensreg.run.config import ConfigError
from sensreg.run.config_diff import config_differences
from sensreg.data import load_dataset
from sensreg.run.reevaluate import evaluate_checkpoint
from sensreg.models import build_model
from sensreg.method.pruning import Masks, prunable_names
from sensreg.method.sensitivity import get_variant
from sensreg.run.lifecycle import train
from sensreg.method.step import StepSettings
from sensreg.run.loop import TrainStep
from conftest import config  # the small synthetic-data run every training test starts from

# bf16 against fp32 sensitivity, per parameter tensor: |S_bf16 - S_fp32| / |S_fp32| in the
# Frobenius norm. The batch-mean derivative sums signed per-sample terms, each rounded to
# bfloat16's 8-bit mantissa, so the error is well above bfloat16's 0.4 % rounding step.
# Measured, over spec and unspec (logits and probs) and loss: LeNet-300-100 and LeNet-5 at
# initialization, in the tests below, up to 5.5 % (loss gradient 5.1 %); on MNIST and on the
# synthetic data, at initialization and after 200 fp32 steps, up to 6.3 %. The tolerance leaves
# a margin of more than two.
BF16_TOLERANCE = 0.15
# fp16 against fp32, LeNet-300-100 in the test below: up to 1.2 % (loss gradient 1.2 %).
FP16_TOLERANCE = 0.03


def relative_errors(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> list[float]:
    return [float((a - e).norm() / e.norm()) for a, e in zip(actual, expected)]


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """100 synthetic MNIST-shaped samples."""
    data = load_dataset("synthetic", val_fraction=0.1, num_train=200, num_test=10)
    return data.train.x[:100], data.train.y[:100]


def make_step(model_name: str, sens: str = "spec", precision: str = "fp32", output: str = "logits",
              seed: int = 0) -> TrainStep:
    torch.manual_seed(seed)
    model = build_model(model_name, 10, (1, 28, 28))
    names = prunable_names(model, "all")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return TrainStep(model, optimizer, Masks(model, names), StepSettings(get_variant(sens), names, output),
                     precision=precision)


# --- bf16 -----------------------------------------------------------------------------------------

@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("model", ["lenet300", "lenet5"])
def test_a_bf16_step_trains_the_fp32_weights(model, batch):
    step = make_step(model, "spec", "bf16")
    before = [p.detach().clone() for p in step.params]
    loss = step(*batch, lam=1e-3)
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))
    assert step.scaler is None  # bfloat16 has float32's exponent range: no loss scaling
    for p, b in zip(step.params, before):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
        assert step.optimizer.state[p]["momentum_buffer"].dtype == torch.float32
        assert not torch.equal(p, b)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("sens, output", [("spec", "logits"), ("spec", "probs"), ("unspec", "logits"),
                                          ("unspec", "probs"), ("loss", "logits")])
@pytest.mark.parametrize("model", ["lenet300", "lenet5"])
def test_bf16_sensitivity_matches_fp32(model, sens, output, batch):
    fp32 = make_step(model, sens, "fp32", output)
    bf16 = make_step(model, sens, "bf16", output)  # the same initial weights
    loss32, grads32, sens32 = fp32.gradients(*batch)
    loss16, grads16, sens16 = bf16.gradients(*batch)
    assert all(s.dtype == torch.float32 for s in sens16)
    assert max(relative_errors(sens16, sens32)) < BF16_TOLERANCE
    assert max(relative_errors(grads16, grads32)) < BF16_TOLERANCE
    assert float(loss16) == pytest.approx(float(loss32), rel=0.01)


# --- fp16 (CUDA only through the config; its logic on the CPU here) -------------------------------------

@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("sens, output", [("spec", "logits"), ("unspec", "probs"), ("loss", "logits")])
def test_fp16_scales_the_loss_gradient_but_not_the_sensitivities(sens, output, batch):
    fp32 = make_step("lenet300", sens, "fp32", output)
    fp16 = make_step("lenet300", sens, "fp16", output)
    scale = fp16.scaler.get_scale()
    assert scale == 2.0**16  # GradScaler's initial scale
    _, grads32, sens32 = fp32.gradients(*batch)
    _, grads16, sens16 = fp16.gradients(*batch)
    assert max(relative_errors([g / scale for g in grads16], grads32)) < FP16_TOLERANCE
    assert max(relative_errors(sens16, sens32)) < FP16_TOLERANCE  # unscaled, and no underflow to speak of
    before = [p.detach().clone() for p in fp16.params]
    fp16(*batch, lam=1e-3)
    assert all(p.dtype == torch.float32 and not torch.equal(p, b) for p, b in zip(fp16.params, before))


@pytest.mark.usefixtures("single_thread")
def test_fp16_step_whose_gradient_overflows_is_skipped_whole(batch):
    step = make_step("lenet300", "loss", "fp16")
    step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows float16 for sure
    before = [p.detach().clone() for p in step.params]
    loss = step(*batch, lam=1e-2)
    assert bool(torch.isfinite(loss))
    assert all(torch.equal(p, b) for p, b in zip(step.params, before))  # no shrink, no optimizer step
    assert step.scaler.get_scale() == 2.0**39
    step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    step(*batch, lam=1e-2)
    assert all(bool(torch.isfinite(p).all()) and not torch.equal(p, b) for p, b in zip(step.params, before))


# --- training runs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["lenet300", "lenet5"])  # LeNet-5 in channels_last
def test_bf16_training_prunes_to_exact_zeros(tmp_path, model):
    # The threshold search evaluates the validation split in bf16 too.
    cfg = config(model={"name": model}, sens={"name": "spec", "lam": 1e-3}, trainer={"precision": "bf16"},
                 prune={"name": "search", "patience": 0, "tolerance": 0.5})
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["thresholds"] and summary["remaining_pct"] < 100.0
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["config"]["trainer"]["precision"] == "bf16"
    pruned = 0
    for name, mask in ckpt["masks"].items():
        weights = ckpt["state_dict"][name]
        assert weights.dtype == torch.float32
        assert torch.equal(weights[~mask], torch.zeros_like(weights[~mask]))
        pruned += int((~mask).sum())
    assert pruned > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_the_gpu(tmp_path, precision):
    cfg = config(sens={"name": "unspec", "lam": 1e-3}, trainer={"precision": precision, "device": "cuda"},
                 prune={"name": "fixed", "threshold": 5e-3})
    summary = train(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["remaining_pct"] < 100.0
    ckpt = load_checkpoint(tmp_path / "model.pt")
    for name, mask in ckpt["masks"].items():
        weights = ckpt["state_dict"][name]
        assert weights.dtype == torch.float32 and not bool(weights[~mask].any())
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (state["scaler"] is not None) == (precision == "fp16")  # the loss scale, for a resume


# --- config ---------------------------------------------------------------------------------------------

def test_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"trainer.precision='fp8' is not one of: fp32, bf16, fp16."):
        config(trainer={"precision": "fp8"})


def test_fp16_is_refused_on_the_cpu():
    with pytest.raises(ConfigError, match=r"trainer.precision=fp16 needs a CUDA GPU, but trainer.device=cpu "
                                          r"trains on the CPU; use trainer.precision=bf16"):
        config(trainer={"precision": "fp16"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"trainer.device=auto trains on the CPU \(no GPU here\)"):
            config(trainer={"precision": "fp16", "device": "auto"})
    config(trainer={"precision": "bf16"})


def test_compile_must_be_true_or_false():
    with pytest.raises(ConfigError, match=r"trainer.compile='yes' must be true or false."):
        config(trainer={"compile": "yes"})


def test_precision_and_compile_are_part_of_the_experiment():
    # They change what is computed: a new hash, and a run cannot be resumed with another value.
    # (At their defaults they leave the hash of configs saved before they existed alone:
    # test_config.py::test_a_key_added_later_keeps_old_configs_hash_and_resumable.)
    base = config()
    for trainer in ({"precision": "bf16"}, {"compile": True}):
        other = config(trainer=trainer)
        assert other.hash() != base.hash()
        [difference] = config_differences(base.to_dict(), other.to_dict())
        assert difference.startswith(f"trainer.{next(iter(trainer))}:")


# --- torch.compile ---------------------------------------------------------------------------------------

def cannot_compile() -> str | None:
    """Why torch.compile cannot run here, or None. Inductor compiles C++ kernels on the CPU."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # noqa: BLE001  any failure to find one means: skip
        return f"torch.compile needs a C++ compiler for the CPU and none works here ({type(err).__name__})"
    return None


needs_compile = pytest.mark.skipif(cannot_compile() is not None, reason=str(cannot_compile()))


def test_compiled_step_takes_the_unspecific_vjps_one_class_at_a_time():
    # Autograd's batched-gradient mode fails on inductor's compiled backward (aten::mm.out has
    # no batching rule); LeNet-300-100 would use it uncompiled. Building the step compiles nothing.
    torch.manual_seed(0)
    model = build_model("lenet300", 10, (1, 28, 28))
    names = prunable_names(model, "all")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    eager = TrainStep(model, optimizer, Masks(model, names), StepSettings(get_variant("unspec"), names))
    compiled = TrainStep(model, optimizer, Masks(model, names), StepSettings(get_variant("unspec"), names),
                         compile=True)
    assert eager.method.batched and not compiled.method.batched
    assert compiled.method.forward_fn is not model and compiled.method.model is model


@pytest.mark.slow  # two compilations of forward and backward: 10-30 s on a CPU
@needs_compile
def test_sensitivity_through_the_compiled_model_matches_eager(batch, tmp_path, monkeypatch):
    # The sensitivities run several backward passes through one compiled graph. First the same
    # network is compiled as a plain training script would use it (default settings, one
    # backward pass per forward), which leaves a backward that donates its saved buffers (runs
    # once only) in the compile cache: the training step must not pick that up.
    import torch._dynamo

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    plain = make_step("lenet300", "none").model
    F.cross_entropy(torch.compile(plain)(batch[0]), batch[1]).backward()
    torch._dynamo.reset()  # what remains is the disk cache, as for a new process
    try:
        for sens in ("spec", "unspec"):
            eager = make_step("lenet300", sens)
            compiled = make_step("lenet300", sens)  # the same initial weights
            compiled = TrainStep(compiled.model, compiled.optimizer, compiled.masks, compiled.settings,
                                 compile=True)
            for step in (eager, compiled):
                step(*batch, lam=1e-3)  # a step, then the quantities at the new weights
            loss, grads, sensitivity = compiled.gradients(*batch)
            loss_eager, grads_eager, sensitivity_eager = eager.gradients(*batch)
            torch.testing.assert_close(loss, loss_eager)
            torch.testing.assert_close(grads, grads_eager, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(sensitivity, sensitivity_eager, rtol=1e-4, atol=1e-6)
    finally:
        torch._dynamo.reset()


@pytest.mark.slow  # compiling forward and backward takes 5-15 s on a CPU
@needs_compile
def test_compiled_training_matches_eager_and_saves_a_plain_model(tmp_path):
    # unspec: every backward pass (loss, then one per class) runs through the compiled graph.
    sections = dict(model={"name": "lenet300"}, sens={"name": "unspec", "lam": 1e-3},
                    trainer={"epochs": 1}, prune={"name": "fixed", "threshold": 5e-3})
    train(config(**sections), tmp_path / "eager")
    sections["trainer"] = {**sections["trainer"], "compile": True}
    from torch._dynamo.utils import counters

    counters.clear()
    summary = train(config(**sections), tmp_path / "compiled")
    assert summary["status"] == "completed"
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile (no silent eager fallback)
    eager = load_checkpoint(tmp_path / "eager" / "model.pt")
    compiled = load_checkpoint(tmp_path / "compiled" / "model.pt")
    assert compiled["state_dict"].keys() == eager["state_dict"].keys()  # no _orig_mod. prefix
    for name, mask in eager["masks"].items():
        assert torch.equal(compiled["masks"][name], mask)
    assert any(not bool(m.all()) for m in eager["masks"].values())  # the threshold pruned something
    for name, weights in eager["state_dict"].items():
        torch.testing.assert_close(compiled["state_dict"][name], weights, rtol=1e-4, atol=1e-5)
    # model.pt loads into an uncompiled model and evaluates as it did in the run
    model = build_model("lenet300", 10, (1, 28, 28))
    model.load_state_dict(compiled["state_dict"])
    assert evaluate_checkpoint(tmp_path / "compiled" / "model.pt")["test_error"] == summary["test_error"]


@needs_compile
def test_a_failed_compilation_is_a_clear_error(tmp_path, monkeypatch):
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # nothing compiled earlier in this process may be reused
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # its leftovers go here
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    try:
        with pytest.raises(CompileError, match=r"trainer.compile=true, but torch.compile failed on this "
                                               r"machine \(.*set trainer.compile=false"):
            train(config(trainer={"epochs": 1, "compile": True}), tmp_path / "run")
    finally:
        torch._dynamo.reset()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("CompileError: trainer.compile=true")
