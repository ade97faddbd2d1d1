"""Masks, pruning by thresholding, the validation-bounded threshold search, sparsity statistics.

A pruned parameter is held at exactly zero for the rest of training: its gradient is masked
before the optimizer step, its optimizer state (momentum, Adam moments) is zeroed when it is
pruned, and the parameter itself is multiplied by its mask after every step.

A threshold has a scope (config key prune.scope): ``global``, one threshold T on |w| for every
prunable tensor; or ``layer``, one dimensionless τ that prunes, in each tensor l, the entries with
|w| < τ·σ_l, σ_l the standard deviation of the tensor's kept entries (Han et al. 2015, "Learning
both weights and connections"); see ``Masks.scales``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sensreg.errors import CheckpointError, few_names


# Normalization layers, whose affine parameters (a gain and an offset per channel or feature,
# applied to a normalized activation) are left out of the regularized and pruned sets unless
# ``batchnorm=True`` (config key prune.batchnorm). Batch norm (``_NormBase``: BatchNorm1d/2d/3d,
# SyncBatchNorm, and InstanceNorm, the same layer with per-sample statistics) is what the option
# is about; group, layer and RMS norm play the same role, so they follow the same rule rather
# than being pruned under a key that says they are not. Why not by default: they are at most
# about half a percent of a network's parameters (ResNet-20 0.5 %, ResNet-50 0.2 %, VGG-16-BN
# 0.06 %), so pruning them gains next to nothing in size, and none in FLOPs; and a zero gain
# switches off a whole channel, a structured cut unlike the per-entry pruning of weights.
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())  # RMSNorm: torch >= 2.4


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the affine parameters of every normalization layer (``NORM_LAYERS``) of ``model``,
    found by module type, under every name by which the model reaches them."""
    return {f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules(remove_duplicate=False) if isinstance(module, NORM_LAYERS)
            for name, _ in module.named_parameters(recurse=False)}


def prunable_names(model: nn.Module, which: str, batchnorm: bool = False) -> list[str]:
    """Names of the parameters that may be pruned (and regularized): ``all`` or ``weights``.

    ``weights`` means every parameter of two or more dimensions (linear and conv kernels);
    biases and other vectors are then left alone. ``batchnorm``: whether the affine parameters
    of normalization layers (``NORM_LAYERS``) belong to ``all``; they are vectors, so
    ``weights`` never includes them. Frozen parameters (``requires_grad`` False) never do: they
    are not trained, so neither shrunk nor pruned.
    """
    if which not in ("all", "weights"):
        raise ValueError(f"unknown parameter set {which!r}; known: all, weights")
    norm = set() if batchnorm else norm_parameter_names(model)
    return [n for n, p in model.named_parameters()
            if p.requires_grad and (which == "all" or p.dim() > 1) and n not in norm]


class Masks:
    """One boolean mask per prunable parameter; True = kept."""

    def __init__(self, model: nn.Module, names: list[str]):
        params = dict(model.named_parameters())
        self.names = list(names)
        self.params = [params[n] for n in self.names]
        self.masks = [torch.ones_like(p, dtype=torch.bool) for p in self.params]
        # The masks in the parameters' dtype, for the per-step multiplications: multiplying by
        # a bool tensor converts it every time (a third of LeNet-300-100's CPU step was that).
        self.factors = [torch.ones_like(p) for p in self.params]
        self.active = False  # nothing pruned yet: skip the per-step masking work

    def _masks_changed(self) -> None:
        for f, m in zip(self.factors, self.masks):
            f.copy_(m)
        self.active = any(not bool(m.all()) for m in self.masks)

    # -- holding pruned entries at zero -------------------------------------------------------
    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every pruned parameter entry."""
        if self.active:
            torch._foreach_mul_(self.params, self.factors)

    @torch.no_grad()
    def mask_(self, tensors: list[Tensor]) -> None:
        """Zero the pruned entries of tensors shaped like the prunable parameters (gradients)."""
        if self.active:
            torch._foreach_mul_(tensors, self.factors)

    @torch.no_grad()
    def zero_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer state (momentum, moments) of pruned entries."""
        for p, m in zip(self.params, self.masks):
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.mul_(m)

    # -- pruning ------------------------------------------------------------------------------
    @torch.no_grad()
    def scales(self, scope: str) -> list[float]:
        """The unit of each tensor's threshold, in the order of ``names``: a threshold τ prunes,
        in tensor l, the entries with |w| < τ·scales[l] (``scaled_thresholds``).

        ``global``: 1.0 for every tensor. ``layer``: σ_l, the population standard deviation
        (divisor n, not n - 1) of the signed values of the tensor's kept entries, pruned entries
        left out, computed in float64 from the tensor itself (so every process, holding the same
        weights, gets the same). It changes as the tensor is pruned, so a search takes it once
        and keeps it for all the thresholds it tries. A tensor with fewer than two kept entries,
        or whose kept entries are all equal (σ_l = 0: a batch-norm gain still at its initial 1, a
        bias at 0), gets 0: its threshold τ·0 = 0 prunes nothing at any τ, so the rule never
        empties it (it has no spread to measure; |w|/σ_l would be infinite or undefined). The
        population σ is at most the largest kept |w| (σ² = mean(w²) - mean(w)² <= max w²), so
        τ <= 1 never empties a tensor either; ``emptying_threshold`` bounds τ from above.
        """
        if scope == "global":
            return [1.0] * len(self.params)
        if scope != "layer":
            raise ValueError(f"unknown threshold scope {scope!r}; known: global, layer")
        out = []
        for p, m in zip(self.params, self.masks):
            kept = p.detach()[m].double()
            sigma = float(kept.std(correction=0)) if kept.numel() >= 2 else 0.0
            out.append(sigma if sigma > 0 and sigma != float("inf") else 0.0)  # also nan
        return out

    @staticmethod
    def scaled_thresholds(threshold: float, scales: Sequence[float]) -> list[float]:
        """The per-tensor thresholds threshold·scale (``scales``); with the global scales 1.0,
        ``threshold`` itself for every tensor."""
        return [threshold * s for s in scales]

    @torch.no_grad()
    def prune_below_(self, threshold: float | Sequence[float],
                     optimizer: torch.optim.Optimizer | None = None) -> int:
        """Prune every entry with |w| < threshold; returns how many entries were newly pruned.

        ``threshold``: one number for every tensor, or a list or tuple of one per tensor in the
        order of ``names`` (``scaled_thresholds``)."""
        if isinstance(threshold, (list, tuple)):
            if len(threshold) != len(self.params):
                raise ValueError(f"{len(threshold)} thresholds for {len(self.params)} tensors")
            thresholds = list(threshold)
        else:
            thresholds = [threshold] * len(self.params)
        return self.drop_([(p.abs() < t) & m for p, m, t in zip(self.params, self.masks, thresholds)],
                           optimizer)[0]

    @torch.no_grad()
    def keep_largest_(self, kept: int | Sequence[int], optimizer: torch.optim.Optimizer | None = None
                      ) -> tuple[int, float]:
        """Prune all but the ``kept`` largest |w| of the kept entries, never regrowing one;
        returns how many entries were newly pruned and the largest |w| pruned (0.0: none).

        ``kept``: one count for all tensors together, of which every tensor keeps at least its
        largest entry (so none is emptied); or one count per tensor, in the order of ``names``.
        Ties in |w| are broken by position (a stable sort), so the result is exact and the same
        every time: the masks keep exactly the counts asked for (or what they kept already).
        """
        magnitudes = [torch.where(m, p.detach().abs(), -1.0).flatten() for p, m in zip(self.params, self.masks)]
        if isinstance(kept, int):
            # Each tensor's largest kept entry first, at +inf; then the rest by |w|.
            ranked = [mag.clone() for mag in magnitudes]
            for r, m in zip(ranked, self.masks):
                if m.any():
                    r[r.argmax()] = float("inf")
            keep = _largest(torch.cat(ranked), max(kept, sum(bool(m.any()) for m in self.masks)))
            keeps = list(keep.split([m.numel() for m in self.masks]))
        else:
            keeps = [_largest(mag, k) for mag, k in zip(magnitudes, kept)]
        return self.drop_([m & ~k.reshape(m.shape) for m, k in zip(self.masks, keeps)], optimizer)

    def drop_(self, drops: list[Tensor], optimizer: torch.optim.Optimizer | None) -> tuple[int, float]:
        """Prune the entries marked in ``drops`` (kept ones only), hold them at zero and clear
        their optimizer state; returns how many were pruned and the largest |w| among them."""
        newly, largest = 0, 0.0
        for p, m, drop in zip(self.params, self.masks, drops):
            if drop.any():
                newly += int(drop.sum())
                largest = max(largest, float(p.detach().abs()[drop].max()))
                m &= ~drop
        if newly:
            self._masks_changed()
            self.apply_()
            if optimizer is not None:
                self.zero_optimizer_state_(optimizer)
        return newly, largest

    def state_dict(self) -> dict[str, Tensor]:
        return {n: m.clone() for n, m in zip(self.names, self.masks)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != set(self.names):
            # Masks of other parameters would leave entries pruned in the saved run unmasked here
            # (or fail on a missing one): the runs prune different parameter sets.
            extra, missing = sorted(set(state) - set(self.names)), sorted(set(self.names) - set(state))
            raise CheckpointError(
                "the saved masks do not cover the parameters this run prunes"
                + (f"; masks for parameters this run does not prune: {few_names(extra)}" if extra else "")
                + (f"; no masks for: {few_names(missing)}" if missing else "")
                + ". A run of a network with batch norm saved before prune.batchnorm existed pruned its "
                  "batch-norm parameters, which this version cannot continue: start that run again.")
        for n, m in zip(self.names, self.masks):
            m.copy_(state[n].to(m.device, torch.bool))
        self._masks_changed()

    # -- statistics ---------------------------------------------------------------------------
    def kept(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks))

    def total(self) -> int:
        return int(sum(m.numel() for m in self.masks))

    def remaining_pct(self) -> float:
        return 100.0 * self.kept() / max(1, self.total())

    @torch.no_grad()
    def kept_l1(self) -> float:
        """Σ|w| over the kept entries (the pruned ones are zero), in float64."""
        return float(sum(float((p.detach() * m).abs().sum(dtype=torch.float64))
                         for p, m in zip(self.params, self.masks)))

    @torch.no_grad()
    def _kept_normalized(self, scales: Sequence[float]) -> Iterator[tuple[Tensor, Tensor]]:
        """(parameter, |w| / scale of its kept entries: float64, flattened, on the CPU) for every
        tensor of non-zero scale; a tensor of scale 0 has nothing any threshold prunes.

        float64, so that for float32 weights the candidate τ_i = |w_i| / σ_l gives back
        exactly |w_i| as the float32 threshold τ_i·σ_l: it prunes the entries below w_i, not w_i."""
        for p, m, s in zip(self.params, self.masks, scales):
            if s > 0:
                yield p, p.detach()[m].abs().flatten().cpu().double() / s

    def kept_magnitudes(self, scales: Sequence[float] | None = None) -> Tensor:
        """|w| of every kept prunable entry, flattened, on the CPU, sorted ascending.

        With ``scales`` (``scales("layer")``): |w| / σ_l instead, in float64, the candidate
        values of τ; tensors of scale 0 are left out."""
        if scales is None:
            values = torch.cat([p.detach()[m].abs().flatten().float().cpu() for p, m in zip(self.params, self.masks)])
        else:
            values = torch.cat([v for _, v in self._kept_normalized(scales)]
                               or [torch.empty(0, dtype=torch.float64)])
        return values.sort().values

    @torch.no_grad()
    def emptying_threshold(self, scales: Sequence[float] | None = None) -> float:
        """The highest global threshold that leaves every weight tensor (two or more dimensions)
        an entry: the smallest of their largest kept |w| (a threshold prunes the entries below
        it). A higher one cuts the network's output off from its input; a network no better
        than chance, whose loss that hardly changes, would otherwise let the search prune it all.

        With ``scales``: the same in the units of τ, the smallest largest kept |w| / σ_l, computed
        as ``kept_magnitudes(scales)`` computes its values; tensors of scale 0 do not count (no τ
        prunes them)."""
        if scales is None:
            largest = [float(p.detach()[m].abs().max()) for p, m in zip(self.params, self.masks)
                       if p.dim() > 1 and bool(m.any())]
        else:
            largest = [float(v.max()) for p, v in self._kept_normalized(scales) if p.dim() > 1 and v.numel()]
        return min(largest, default=float("inf"))


@dataclass
class SearchResult:
    threshold: float  # 0.0 when no threshold within tolerance prunes anything
    loss_before: float
    loss_after: float
    evaluations: int


def search_threshold(magnitudes: Tensor, loss_with_threshold: Callable[[float], float],
                     loss_before: float, tolerance: float, max_evaluations: int = 40,
                     limit: float = float("inf")) -> SearchResult:
    """Bisection for the largest global threshold T with loss(T) <= (1 + tolerance) * loss_before.

    ``magnitudes`` are the sorted |w| of the kept prunable entries; the candidate thresholds are
    those values themselves (T = magnitudes[i] prunes exactly the i smallest entries, ties
    aside) plus one just above the largest. ``loss_with_threshold(T)`` returns the validation
    loss with every entry |w| < T pruned, leaving the model unchanged. Bisection assumes that
    the loss grows with T, which holds for the magnitude ordering in all but pathological cases.
    A threshold above ``limit`` counts as unacceptable without being tried (see
    ``Masks.emptying_threshold``).

    Per-layer thresholds (prune.scope=layer) use the same search on the normalized magnitudes
    |w| / σ_l (``Masks.kept_magnitudes(scales)``): T is then τ, and ``loss_with_threshold(τ)``
    prunes |w| < τ·σ_l in each tensor.
    """
    bound = (1.0 + tolerance) * loss_before
    n = magnitudes.numel()
    if n == 0:
        return SearchResult(0.0, loss_before, loss_before, 0)
    candidates = torch.cat([magnitudes, magnitudes[-1:].nextafter(torch.tensor(float("inf")))])

    def threshold_at(i: int) -> float:
        return float(candidates[i])

    # Invariant: index lo is known acceptable (lo = 0 prunes nothing), hi is known unacceptable
    # or past the end.
    lo, hi, evaluations = 0, n + 1, 0
    best_loss = loss_before
    while hi - lo > 1 and evaluations < max_evaluations:
        mid = (lo + hi) // 2
        if threshold_at(mid) > limit:
            hi = mid
            continue
        loss = loss_with_threshold(threshold_at(mid))
        evaluations += 1
        if loss <= bound:
            lo, best_loss = mid, loss
        else:
            hi = mid
    return SearchResult(threshold_at(lo) if lo > 0 else 0.0, loss_before, best_loss, evaluations)


# --- sparsity and FLOPs ------------------------------------------------------------------------

@torch.no_grad()
def layer_macs_per_weight(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """For each conv/linear weight, how many multiply-accumulates one of its entries costs per
    input sample: 1 for a linear layer, the number of output positions for a convolution."""
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            def hook(mod, inp, out, name=name):
                positions[f"{name}.weight" if name else "weight"] = (
                    int(out[0, 0].numel()) if isinstance(mod, nn.modules.conv._ConvNd) else 1)
            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return positions


@torch.no_grad()
def sparsity_stats(model: nn.Module, input_shape: tuple[int, ...], prunable: list[str]) -> dict:
    """Remaining parameters per layer and overall, and dense vs remaining FLOPs.

    Counts non-zero entries of the weights themselves, so it needs no masks: a saved model
    alone gives the same figures. FLOPs are multiply-accumulates of conv and linear layers per
    input sample; a zero weight entry costs nothing. Biases, batch norm, pooling, activations
    and residual additions count zero FLOPs, as in the published figures (torchvision's GFLOPS
    for VGG and ResNet): their rows still count parameters, with flops_dense = 0.
    """
    macs = layer_macs_per_weight(model, input_shape)
    layers, flops_dense, flops_left = [], 0, 0
    for name, p in model.named_parameters():
        nonzero = int((p != 0).sum())
        layers.append({
            "name": name, "shape": list(p.shape), "params": p.numel(), "nonzero": nonzero,
            "remaining_pct": 100.0 * nonzero / p.numel(),
            "compression": p.numel() / max(1, nonzero),
            "prunable": name in prunable,
            "flops_dense": macs.get(name, 0) * p.numel(), "flops_remaining": macs.get(name, 0) * nonzero,
        })
        flops_dense += layers[-1]["flops_dense"]
        flops_left += layers[-1]["flops_remaining"]

    def totals(rows: list[dict]) -> dict:
        params = sum(r["params"] for r in rows)
        nonzero = sum(r["nonzero"] for r in rows)
        return {"params": params, "nonzero": nonzero, "remaining_pct": 100.0 * nonzero / max(1, params),
                "compression": params / max(1, nonzero)}

    return {
        "layers": layers,
        "prunable": totals([r for r in layers if r["prunable"]]),
        "all": totals(layers),
        "flops": {"dense": flops_dense, "remaining": flops_left,
                  "remaining_pct": 100.0 * flops_left / max(1, flops_dense)},
    }


def _largest(magnitudes: Tensor, k: int) -> Tensor:
    """Where the ``k`` largest entries of ``magnitudes`` are (ties: the first in order), at most
    as many as are not negative (negative: already pruned)."""
    k = min(k, int((magnitudes >= 0).sum()))
    order = torch.sort(magnitudes, descending=True, stable=True).indices
    keep = torch.zeros_like(magnitudes, dtype=torch.bool)
    keep[order[:k]] = True
    return keep
