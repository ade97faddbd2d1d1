#!/usr/bin/env python
"""Inference speed of pruned networks: the dense network against the compacted one
(``sensreg.compact``), in torch eager and in ONNX Runtime, and the compacted network with its
linear layers stored sparse (CSR), side by side in one process on stated CPU threads.

Batch 1 latency and batch 256 throughput, each the median of repeats after warm-up, measured by
the same code as ``sensreg export`` (``sensreg.run.speed``), on the run's first test images.
Printed per run with the multiply-add ratio, so that the speed-up can be read against what the
compaction removed:

    python scripts/bench_infer.py outputs/reference/lenet300_long80_spec/seed0 outputs/reference/lenet5_spec/seed0
    python scripts/bench_infer.py RUN --threads 2 --json /tmp/bench.json
    python scripts/bench_infer.py RUN --no-onnx      # torch only

``compact_csr``: the compacted network with every linear layer's weight held as a CSR sparse
matrix (``sensreg.csr_linears``); convolutions stay dense. Torch eager only (torch.export and
ONNX take no sparse weights): see docs/results.md for where it wins and where it loses.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from sensreg import csr_linears
from sensreg.data import batches, load_test_split
from sensreg.run import speed as timing
from sensreg.records.checkpoint import load_checkpoint, saved_network
from sensreg.data.config import DataConfig
from sensreg.run.export import write_onnx
from sensreg.records.structure import compact_network, example_batch


def bench_run(run: Path, threads: int, onnx: bool) -> dict:
    ckpt = load_checkpoint(run / "model.pt")
    data = DataConfig(**ckpt["config"]["data"])
    test, _, _ = load_test_split(data.name, data.root, "cpu", **data.loader_options())
    dense = saved_network(ckpt)
    dense.load_state_dict(ckpt["state_dict"])
    dense.eval()
    compaction = compact_network(dense, test, ckpt["masks"])
    images = next(iter(batches(test, timing.BATCH)))[0]
    csr = csr_linears(compaction.model)
    with torch.inference_mode():
        reference = compaction.model(images)
        assert torch.allclose(csr(images), reference, atol=1e-4), "CSR layers changed the output"
    runners = {"dense": timing.torch_runner(dense), "compact": timing.torch_runner(compaction.model),
               "compact_csr": timing.torch_runner(csr)}
    with tempfile.TemporaryDirectory() as tmp:
        if onnx:
            example = example_batch(test)
            problem = write_onnx(dense, example, Path(tmp) / "dense.onnx") or \
                write_onnx(compaction.model, example, Path(tmp) / "compact.onnx")
            if problem:
                print(problem)
            else:
                runners["onnx_dense"] = timing.onnx_runner(timing.onnx_session(Path(tmp) / "dense.onnx", threads))
                runners["onnx"] = timing.onnx_runner(timing.onnx_session(Path(tmp) / "compact.onnx", threads))
        measured = timing.measure(runners, images, threads)
    return {"run": str(run), "model": ckpt["model_name"], "shape": compaction.shape(),
            "params": compaction.params, "macs": compaction.macs, "speed": measured}


def print_run(result: dict) -> None:
    macs, speed = result["macs"], result["speed"]
    lat, rate = speed["batch1_us"], speed["batch256_per_s"]
    print(f"\n{result['run']}  ({result['model']}, compacted to {result['shape']}; {speed['threads']} thread(s))")
    print(f"  multiply-adds per image: dense {macs['dense']:,}, compacted {macs['compact']:,} "
          f"({macs['dense'] / macs['compact']:.1f}x fewer), nonzero weights {macs['nonzero']:,} "
          f"({macs['dense'] / macs['nonzero']:.1f}x fewer)")
    print(f"  {'':14} {'batch 1 (µs)':>14} {'x dense':>8} {'batch ' + str(speed['batch']) + ' (img/s)':>18} {'x dense':>8}")
    for name in lat:
        base = "onnx_dense" if name.startswith("onnx") else "dense"
        print(f"  {name:14} {lat[name]:14,.0f} {lat[base] / lat[name]:8.2f} {rate[name]:18,.0f} "
              f"{rate[name] / rate[base]:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (with model.pt)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    parser.add_argument("--no-onnx", action="store_true", help="torch only")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    results = []
    for run in args.runs:
        result = bench_run(run, args.threads, onnx=not args.no_onnx)
        print_run(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
