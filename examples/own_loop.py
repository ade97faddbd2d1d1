"""Sensitivity-driven regularization in a plain PyTorch loop, no Hydra, no runner.

LeNet-300-100 on MNIST with the settings of `sensreg train` (the main job): specific
sensitivity at lambda 3e-4, SGD at 0.05 with Nesterov momentum, both divided by 10 at 80 % of the
run, gradual magnitude pruning to 22x over the same 80 %. With the same seed it gives the
figures of `sensreg train trainer.epochs=N` epoch by epoch (tests/test_own_loop.py checks it).

    python examples/own_loop.py --epochs 2
"""

import argparse

import torch
import torch.nn.functional as F

import sensreg
from sensreg.data import batches, load_dataset, num_batches
from sensreg.models import build_model


@torch.no_grad()
def evaluate(model, split, batch_size=1000):
    """Mean cross-entropy and top-1 error on a split."""
    model.eval()
    loss, wrong = torch.zeros((), dtype=torch.float64), 0
    for x, y in batches(split, batch_size):
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").double()
        wrong += int((logits.argmax(dim=1) != y).sum())
    model.train()
    return {"loss": float(loss) / len(split), "error": wrong / len(split)}


def train(epochs=20, seed=0, dataset="mnist", root="data", lam=3e-4, lr=0.05, batch_size=100, **data_options):
    torch.manual_seed(seed)  # before the split and the initialization, in that order
    data = load_dataset(dataset, root, 0.1, 0, "cpu", **data_options)
    model = build_model("lenet300", data.num_classes, data.input_shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    step = sensreg.SensitivityStep(model, optimizer, "spec")
    steps_per_epoch = num_batches(data.train, batch_size)
    prune = sensreg.prune_schedule("gmp", epochs, target=0.955, stop_epoch=0.8, every=100)
    context = sensreg.PruneContext(model, step.masks, optimizer, lambda: evaluate(model, data.val), steps_per_epoch)
    drop = int(0.8 * epochs + 0.5)  # eta and lambda divided by 10 from this epoch on (0-based)
    order = torch.Generator().manual_seed(seed)
    rows = []
    for epoch in range(epochs):
        factor = 0.1 if epoch >= drop else 1.0
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        loss_sum = torch.zeros(())
        for b, (x, y) in enumerate(batches(data.train, batch_size, shuffle=True, generator=order)):
            loss_sum += step(x, y, lam * factor)
            prune.after_step(epoch + 1, b, context)
        val = prune.after_epoch(epoch + 1, evaluate(model, data.val), context)
        rows.append({"epoch": epoch + 1, "eta": lr * factor, "lam": lam * factor,
                     "train_loss": float(loss_sum) / steps_per_epoch, "val_loss": val["loss"],
                     "val_error": val["error"], "remaining_pct": step.masks.remaining_pct(),
                     "threshold": prune.threshold})
        print(" ".join(f"{k} {v:.4g}" for k, v in rows[-1].items()))
    test = evaluate(model, data.test)
    print(f"test error {100 * test['error']:.2f} % at {100 / step.masks.remaining_pct():.1f}x")
    return model, rows, test


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="data", help="where MNIST is (or is downloaded to)")
    args = parser.parse_args()
    train(args.epochs, args.seed, root=args.root)
