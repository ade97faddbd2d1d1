"""Inference speed as a deployment sees it: one image at a time (latency) and full batches
(throughput), in one process, side by side, on a stated number of CPU threads.

Each figure is the median of repeated timed calls after a few untimed ones (warm-up: caches,
lazy initialization, the allocator). ``sensreg export`` and ``scripts/bench_infer.py`` use
these functions, so their figures are measured the same way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

BATCH = 256  # the throughput batch
WARMUP = 3
# Repeats: at least MIN_REPEATS, and more while under MIN_SECONDS, up to MAX_REPEATS.
MIN_REPEATS, MAX_REPEATS, MIN_SECONDS = 5, 200, 1.0


def median_seconds(call: Callable[[], Any]) -> float:
    """The median wall time of ``call()`` over repeats, after WARMUP untimed calls (the limits
    are read at each call, so that a test can make them small)."""
    min_repeats, max_repeats, min_seconds = MIN_REPEATS, MAX_REPEATS, MIN_SECONDS
    for _ in range(WARMUP):
        call()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - began < min_seconds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def torch_threads(threads: int):
    """torch's intra-op threads set to ``threads`` inside the block, and put back after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_runner(module: torch.nn.Module) -> Callable[[torch.Tensor], Any]:
    """A call of ``module`` without autograd, as inference runs it (``module`` in eval mode
    already: a torch.export program cannot be switched)."""

    def run(x: torch.Tensor) -> Any:
        with torch.inference_mode():
            return module(x)
    return run


def onnx_session(path, threads: int):
    """An ONNX Runtime session of the file at ``path`` on the CPU with ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_runner(session) -> Callable[[torch.Tensor], Any]:
    """A call of an ONNX Runtime session on a tensor, returning the first output as a tensor."""
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    return run


def measure(runners: dict[str, Callable[[torch.Tensor], Any]], images: torch.Tensor,
            threads: int = 1) -> dict[str, Any]:
    """Latency at batch 1 (µs) and throughput at batch BATCH (images/s) of each runner, on
    ``threads`` threads, measured one after another in this process on the same images."""
    one, full = images[:1].contiguous(), images[:BATCH].contiguous()
    out: dict[str, Any] = {"threads": threads, "batch": int(full.shape[0]), "batch1_us": {}, "batch256_per_s": {}}
    with torch_threads(threads):
        for name, run in runners.items():
            out["batch1_us"][name] = 1e6 * median_seconds(lambda: run(one))
            out["batch256_per_s"][name] = full.shape[0] / median_seconds(lambda: run(full))
    return out
