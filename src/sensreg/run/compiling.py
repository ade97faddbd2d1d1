"""torch.compile for the training forward pass (``trainer.compile``).

The compiled module shares the parameters of the model it wraps, so masks, the shrink, the
optimizer and checkpoints keep working on the model itself (a compiled module's state dict would
prefix every key with ``_orig_mod.``). Evaluation and the threshold search use the model
uncompiled. Compilation happens lazily, in the first forward and backward passes; a failure
there becomes a ``CompileError`` whose message says what to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sensreg.errors import RunError


class CompileError(RunError, RuntimeError):
    """torch.compile could not compile the model on this machine (``trainer.compile=true``)."""


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``: shares the parameters of ``model``; compiles at its first call."""
    # Bypassing the caches (compiled_passes) makes dynamo warn that it cannot keep its profile.
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled", category=UserWarning)
    try:
        return torch.compile(model)
    except RuntimeError as err:  # e.g. a Python version that torch.compile does not support yet
        raise compile_error(err) from err


@contextmanager
def compiled_passes() -> Iterator[None]:
    """The settings for every forward and backward pass through a compiled model.

    The sensitivities run several backward passes through one forward graph (retain_graph=True).
    A compiled backward may "donate" the tensors saved for it (reuse their memory), after which
    it can run only once. PyTorch compiles a donating backward where the first backward pass does
    not retain the graph (sens=loss, l2, none), and its caches, in memory and on disk, hand that
    backward on to the same network trained with a sensitivity: an error with the default
    settings, wrong sensitivities without one where donation is merely switched off (the disk
    cache's key does not record donation). So donation is off, and the disk caches are bypassed:
    each run compiles afresh (seconds to a minute, once).
    """
    import torch._functorch.config as aot_config

    with aot_config.patch(donated_buffer=False), torch.compiler.config.patch(force_disable_caches=True):
        yield


def compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed compilation raises: dynamo's errors (inductor's wrapped in them) and
    inductor's C++ compiler errors where they surface unwrapped (in a backward compilation)."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    return TorchDynamoException, CppCompileError, InvalidCxxCompiler


def compile_error(err: BaseException) -> CompileError:
    """A CompileError that names the cause in one line and the way out."""
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return CompileError(f"trainer.compile=true, but torch.compile failed on this machine "
                        f"({type(err).__name__}: {first}). On the CPU it needs a working C++ compiler, "
                        f"on a GPU Triton; set trainer.compile=false to train without compiling.")
