#!/usr/bin/env python
"""Training throughput of sensreg against the usual PyTorch loop, side by side on one device.

(a) The usual loop: torchvision's MNIST with ToTensor and Normalize through a DataLoader, SGD
    with momentum, cross-entropy, no regularizer.
(b) sensreg's training step (``sensreg.run.loop.TrainStep``, the data held on the device as
    sensreg trains) for sens none, loss, spec, unspec and the per-sample reduction of spec.

For LeNet-300-100 and LeNet-5 at batch 100 on MNIST, and, on a GPU only, ResNet-50 on generated
224-pixel images at batch 256 in bf16 (sens none and spec). It prints samples per second and
each figure's ratio to (a) and to sens none, measured in interleaved rounds in one process, and
writes them as JSON.

    python scripts/bench_train.py                          # CPU or GPU, whichever is there
    python scripts/bench_train.py --steps 100 --json bench.json
    python scripts/bench_train.py --data synthetic         # no MNIST needed (the loop (a) then reads
                                                           # the same generated tensors, without a DataLoader's decoding)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_overhead import make_step, time_steps  # noqa: E402  (the same step as the overhead benchmark)

from sensreg.run.config import TrainConfig  # noqa: E402
from sensreg.models import build_model  # noqa: E402
from sensreg.run.lifecycle import setup  # noqa: E402

VARIANTS = ("none", "loss", "spec", "unspec", "spec/sample")
RESNET_VARIANTS = ("none", "spec")


def usual_loader(data: str, root: str, batch_size: int, fallback):
    """(a)'s DataLoader: torchvision MNIST decoded and normalized sample by sample."""
    from torch.utils.data import DataLoader, TensorDataset

    if data == "mnist":
        from torchvision import datasets, transforms

        dataset = datasets.MNIST(root, train=True, download=False, transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]))
    else:
        x, y = fallback
        dataset = TensorDataset(x.cpu(), y.cpu())
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True)


def time_usual_loop(model, loader, device, lr: float, n_steps: int) -> float:
    """Seconds per step of the usual loop over ``n_steps`` steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    done = 0
    _sync(device)
    start = time.perf_counter()
    while done < n_steps:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            done += 1
            if done == n_steps:
                break
    _sync(device)
    return (time.perf_counter() - start) / n_steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(model_name: str, args, variants, data_name: str, shape=None, precision: str = "fp32",
                batch_size: int = 100, usual: bool = True) -> dict:
    cfg = TrainConfig.from_dict({
        "data": {"name": data_name, "root": args.root,
                 **({"shape": shape, "num_train": batch_size * 8, "num_test": batch_size} if data_name == "synthetic" else {})},
        "model": {"name": model_name},
        "trainer": {"device": args.device, "batch_size": batch_size, "precision": precision}})
    device, data, _ = setup(cfg)
    steps, times = {}, {}
    if usual:
        loader = usual_loader(data_name, args.root, batch_size, (data.train.x, data.train.y))
        usual_model = build_model(model_name, data.num_classes, data.input_shape).to(device)
        time_usual_loop(usual_model, loader, device, cfg.optim.lr, args.warmup)
        times["usual"] = []
    for v in variants:
        _, _, model = setup(cfg)
        steps[v] = make_step(cfg, data, model, v)
        time_steps(steps[v], data, batch_size, args.warmup, device, torch.Generator().manual_seed(0))
        times[v] = []
    per_round = max(1, args.steps // args.rounds)
    for r in range(args.rounds):  # interleaved: drift in the machine's load hits every entry alike
        if usual:
            times["usual"].append(time_usual_loop(usual_model, loader, device, cfg.optim.lr, per_round))
        for v in variants:
            times[v].append(time_steps(steps[v], data, batch_size, per_round, device, torch.Generator().manual_seed(r)))
    seconds = {k: statistics.median(t) for k, t in times.items()}
    result = {"model": model_name, "data": data_name, "batch_size": batch_size, "precision": precision,
              "device": str(device), "steps": per_round * args.rounds, "entries": {}}
    for k, t in seconds.items():
        result["entries"][k] = {
            "samples_per_s": batch_size / t, "ms_per_step": 1e3 * t,
            "x_usual": seconds["usual"] / t if "usual" in seconds else None,  # speed-up: > 1 is faster
            "x_none_time": t / seconds["none"] if "none" in seconds else None,  # cost: > 1 is slower
        }
    return result


def show(result: dict) -> None:
    print(f"\n{result['model']} on {result['data']}, batch {result['batch_size']}, {result['precision']}, "
          f"{result['device']}: {result['steps']} steps each")
    print(f"{'entry':<13} {'samples/s':>10} {'ms/step':>9} {'speed vs (a)':>13} {'time vs none':>13}")
    for k, e in result["entries"].items():
        vs_usual = f"{e['x_usual']:.2f}x" if e["x_usual"] else "-"
        vs_none = f"{e['x_none_time']:.2f}x" if e["x_none_time"] and k != "usual" else "-"
        print(f"{'(a) usual' if k == 'usual' else k:<13} {e['samples_per_s']:>10.0f} {e['ms_per_step']:>9.2f} "
              f"{vs_usual:>13} {vs_none:>13}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=200, help="timed steps per entry")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--data", default="mnist", choices=["mnist", "synthetic"])
    ap.add_argument("--root", default="data")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resnet", choices=["auto", "yes", "no"], default="auto",
                    help="ResNet-50 on 224-px generated data, batch 256, bf16 (auto: on a GPU only)")
    ap.add_argument("--json", default="bench_train.json", help="where the figures go")
    args = ap.parse_args()

    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {device} ({machine})")
    results = [bench_model(m, args, args.variants, args.data, shape=[1, 28, 28]) for m in args.models]
    for r in results:
        show(r)
    if args.resnet == "yes" or (args.resnet == "auto" and device.type == "cuda"):
        r = bench_model("resnet50", args, RESNET_VARIANTS, "synthetic", shape=[3, 224, 224],
                        precision="bf16", batch_size=256, usual=False)
        results.append(r)
        show(r)
    else:
        print("\nresnet50: left out (a GPU only; --resnet yes to force)")
    out = {"torch": torch.__version__, "device": str(device), "machine": machine,
           "cpu_threads": torch.get_num_threads(), "results": results}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
