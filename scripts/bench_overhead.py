#!/usr/bin/env python
"""Training-step cost of each sensitivity variant relative to plain training (sens=none).

Times the real training step (``sensreg.run.loop.TrainStep``: forward, loss gradient, sensitivity,
shrink, optimizer step, masks) for LeNet-300-100 and LeNet-5 on MNIST, for sens none, loss,
spec, unspec and neuron (SeReNe's per-unit sensitivity), spec and unspec also with the
per-sample reduction (``spec/sample``: sens.reduction=sample), side by side in one process on
one machine, and prints the ratio of each to ``none`` and of each per-sample variant to its
batch reduction. Half of the prunable weights are pruned first so that the masking work is
included.
Variants are timed in interleaved rounds so that drift in machine load hits all of them alike.

    python scripts/bench_overhead.py                      # 200 steps per variant and model
    python scripts/bench_overhead.py --epochs 1           # whole epochs instead
    python scripts/bench_overhead.py --data synthetic     # no MNIST needed
    python scripts/bench_overhead.py --classes 3          # unspec estimated over 3 sampled classes
    python scripts/bench_overhead.py --precision bf16     # forward under autocast (fp16: CUDA only)
    python scripts/bench_overhead.py --compile            # torch.compile'd forward (compiled in the warm-up)
    python scripts/bench_overhead.py --models resnet32 --data synthetic --shape 3 32 32 \
        --batch-size 128 --variants none spec loss          # ResNet-32 on CIFAR-shaped data: images/s
    python scripts/bench_overhead.py --models resnet20 --data synthetic --shape 3 32 32 \
        --batch-size 128 --variants none spec spec/sample   # the per-sample cost with batch norm
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sensreg.run.config import TrainConfig
from sensreg.data import batches
from sensreg.method.pruning import Masks, prunable_names
from sensreg.method.sensitivity import get_variant
from sensreg.run.lifecycle import setup
from sensreg.method.step import StepSettings
from sensreg.run.loop import TrainStep, build_optimizer

VARIANTS = ("none", "loss", "spec", "unspec", "neuron", "spec/sample", "unspec/sample")
TARGETS = {"loss": 1.1, "spec": 1.7, "unspec": 4.0}


def make_step(cfg: TrainConfig, data, model, variant: str) -> TrainStep:
    """The training step of ``variant`` (a sens.name, or NAME/sample for sens.reduction=sample)."""
    variant, _, reduction = variant.partition("/")
    masks = Masks(model, prunable_names(model, cfg.prune.params, cfg.prune.batchnorm))
    magnitudes = masks.kept_magnitudes()
    masks.prune_below_(float(magnitudes[len(magnitudes) // 2]))
    optimizer = build_optimizer(cfg, model.parameters())
    settings = StepSettings(get_variant(variant), prunable_names(model, cfg.sens.params, cfg.prune.batchnorm),
                            cfg.sens.output, cfg.sens.classes, reduction=reduction or None)
    return TrainStep(model, optimizer, masks, settings, generator=torch.Generator().manual_seed(1),
                     precision=cfg.trainer.precision, compile=cfg.trainer.compile)


def time_steps(step: TrainStep, data, batch_size: int, n_steps: int, device: torch.device,
               generator: torch.Generator) -> float:
    """Seconds per step over ``n_steps`` steps (cycling through shuffled epochs)."""
    done = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    while done < n_steps:
        for x, y in batches(data.train, batch_size, shuffle=True, generator=generator):
            step(x, y, 1e-4)
            done += 1
            if done == n_steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / n_steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=200, help="timed steps per variant (ignored with --epochs)")
    ap.add_argument("--epochs", type=float, default=None, help="time this many epochs per variant instead")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds the steps are split into")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first")
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--root", default="data")
    ap.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"),
                    help="--data synthetic: the shape of one image (3 32 32: like CIFAR)")
    ap.add_argument("--num-train", type=int, default=10000, help="--data synthetic: training images")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output", default="logits", choices=["logits", "probs"])
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--classes", type=int, default=None,
                    help="unspec over K sampled classes (sens.classes) instead of all C exactly")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="trainer.precision: the forward pass under autocast")
    ap.add_argument("--compile", action="store_true", help="trainer.compile: torch.compile the forward pass")
    args = ap.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}, "
          f"batch {args.batch_size}, output {args.output}, precision {args.precision}"
          f"{', compiled' if args.compile else ''}, "
          f"unspec over {'all classes' if args.classes is None else f'{args.classes} sampled classes'}")
    for model_name in args.models:
        cfg = TrainConfig.from_dict({
            "data": {"name": args.data, "root": args.root,
                     **({"shape": args.shape, "num_train": args.num_train} if args.data == "synthetic" else {})},
            "model": {"name": model_name},
            "sens": {"output": args.output, "classes": args.classes},
            "trainer": {"device": args.device, "batch_size": args.batch_size, "precision": args.precision,
                        "compile": args.compile}})
        device, data, _ = setup(cfg)
        steps_per_epoch = -(-len(data.train) // args.batch_size)
        n_steps = round(args.epochs * steps_per_epoch) if args.epochs else args.steps
        per_round = max(1, n_steps // args.rounds)
        steps = {}
        for v in args.variants:
            _, _, model = setup(cfg)  # a fresh model per variant, same initial weights (same seed)
            steps[v] = make_step(cfg, data, model, v)
            time_steps(steps[v], data, args.batch_size, args.warmup, device, torch.Generator().manual_seed(0))
        times: dict[str, list[float]] = {v: [] for v in args.variants}
        for r in range(args.rounds):
            for v in args.variants:
                times[v].append(time_steps(steps[v], data, args.batch_size, per_round, device,
                                           torch.Generator().manual_seed(r)))
        base = statistics.median(times["none"]) if "none" in times else None
        print(f"\n{model_name} on {args.data} ({device}): {per_round * args.rounds} steps per variant "
              f"({per_round * args.rounds / steps_per_epoch:.2f} epochs)")
        print(f"{'variant':<14} {'ms/step':>9} {'images/s':>9} {'s/epoch':>9} {'x none':>8} {'target':>8} "
              f"{'x batch':>8}")
        for v in args.variants:
            t = statistics.median(times[v])
            ratio = f"{t / base:.2f}" if base else "-"
            target = f"<= {TARGETS[v]}" if v in TARGETS else ""
            batch = v.partition("/")[0]  # NAME/sample against NAME
            vs_batch = f"{t / statistics.median(times[batch]):.2f}" if "/" in v and batch in times else ""
            print(f"{v:<14} {1e3 * t:>9.2f} {args.batch_size / t:>9.0f} {t * steps_per_epoch:>9.2f} {ratio:>8} "
                  f"{target:>8} {vs_batch:>8}")


if __name__ == "__main__":
    main()
