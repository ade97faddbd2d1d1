"""Exact compaction: a pruned network rebuilt without the units that cannot change its output.

Pruning leaves zeros; the insensitivity shrink leaves whole units at zero: neurons and filters
whose incoming weights are all pruned, or whose outgoing weights are. Such a unit can be taken
out of the network exactly, leaving a smaller network of plain dense layers that runs faster on
any hardware, with no sparse kernels. ``compact`` does that:

- A unit (a neuron, a conv filter, and with it the next layers' input channel) goes when every
  layer that reads it gives it zero weight (*unused*), or when every layer that writes it gives
  its inputs zero weight (*silent*: it outputs a constant, its bias through batch norm and
  activation) and that constant can be folded into the biases of the layers that read it. A
  fold is exact into a linear layer and into a convolution without zero padding; across zero
  padding the border positions would see a zero instead of the constant, so such a unit stays
  unless its constant is exactly zero.
- Units tied together go together: the channels of a residual sum, of a concatenation, of a
  depthwise convolution. The ties come from the graph of one forward pass, traced by
  Torch-Pruning's ``DependencyGraph`` (the ``torch-pruning`` package), which also removes the
  channels from every tied layer (weights, biases, batch-norm statistics).
- Input features (pixels, or input channels) that the first layer gives zero weight are dropped
  by an index selection in front of it; so is any input column of a later layer that the graph
  could not remove.

The compacted network computes what the masked network computes, in eval mode (batch norm with
its running statistics): ``compact`` checks this on the example input and undoes, group by
group, any removal that would change the output, naming it. Multiply-adds count the linear and
convolution layers (one per weight entry and output position), the usual convention; parameters
count every parameter.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYERS = (nn.Linear, *_CONV)

# Operations in a traced group whose output channel i depends on input channels other than i
# (normalizations across channels, attention and its batched products, reductions, lookups): a
# unit seen through one of them cannot be judged by its own weights, so such a group is left as
# it is. (Mm and Addmm are a linear layer's own product on 3-d inputs: they pass channels on.)
_MIXING = ("Norm", "Softmax", "Bmm", "Baddbmm", "Attention", "Unknown", "Embedding", "Var", "Std", "Gather",
           "Index", "Scatter", "Sort", "Topk", "Cumsum", "Roll", "Fft")


@dataclass
class LayerStructure:
    """One linear or convolution layer before and after compaction: units (output features or
    filters) and inputs kept of those it had, parameters and multiply-adds per sample."""
    name: str
    units: int
    units_kept: int
    inputs: int
    inputs_kept: int
    params: int
    params_compact: int
    macs: int
    macs_nonzero: int
    macs_compact: int


@dataclass
class Compaction:
    """What ``compact`` returns: the smaller network and how it compares with the dense one.

    ``params`` and ``macs`` hold ``dense`` (the network as built), ``nonzero`` (its nonzero
    entries: what a sparse format would store, and the multiply-adds it would do) and
    ``compact`` (the compacted network as dense layers). ``not_compacted``: one line for each
    part that holds removable units and could not be compacted exactly, saying why."""
    model: nn.Module
    layers: list[LayerStructure]
    params: dict[str, int]
    macs: dict[str, int]
    not_compacted: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether anything was removed (False: the network came back as it was)."""
        return self.params["compact"] < self.params["dense"] or self.macs["compact"] < self.macs["dense"]

    def to_dict(self) -> dict[str, Any]:
        """The figures as plain values (summary.json's ``structure``)."""
        return {"params": dict(self.params), "macs": dict(self.macs),
                "units": {layer.name: [layer.units_kept, layer.units] for layer in self.layers},
                "inputs": {layer.name: [layer.inputs_kept, layer.inputs] for layer in self.layers},
                "not_compacted": list(self.not_compacted)}

    def shape(self) -> str:
        """The kept widths as one line, the first layer's inputs first: "458-119-10-10"."""
        if not self.layers:
            return ""
        return "-".join(str(n) for n in [self.layers[0].inputs_kept, *(layer.units_kept for layer in self.layers)])


class SelectInputs(nn.Module):
    """The input features (``dim`` -1, before a linear layer) or channels (``dim`` 1, before a
    convolution) that the next layer reads; the others had only zero weights there."""

    def __init__(self, index: Tensor, dim: int):
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and self.dim in (1, -1):
            # Features of a batch: selected as rows of the transpose, whole rows at a time, since
            # ONNX Runtime's Gather copies single elements along the last axis about 3x slower.
            return x.t().index_select(0, self.index).t()
        return x.index_select(self.dim, self.index)


@torch.no_grad()
def compact(model: nn.Module, example_input: Any, masks: Any = None) -> Compaction:
    """A smaller copy of ``model`` without the units that cannot change its output.

    ``example_input``: a batch the model takes (a tensor, or a tuple of its positional
    arguments); a few real samples are best, since the result is checked on them. ``masks``:
    ``Masks``, or a dict of parameter name -> bool mask (True = kept); None where the pruned
    entries are zero already. ``model`` itself is left as it is. The copy is in eval mode.
    """
    net = _masked_copy(model, masks)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    before = _layer_counts(net, args)
    expected = _outputs(net, args)
    dense_params = sum(p.numel() for p in model.parameters())
    nonzero_params = sum(int(p.count_nonzero()) for p in net.parameters())

    notes: list[str] = []
    compacted = _compact_groups(net, args, expected, notes)
    _select_inputs(compacted)
    if not _same(_outputs(compacted, args), expected):  # cannot happen if the selection is right
        raise AssertionError("input selection changed the network's output")
    after = _layer_counts(compacted, args)
    layers = [LayerStructure(name=n, units=b["out"], units_kept=after.get(n, b)["out"], inputs=b["in"],
                             inputs_kept=after.get(n, b)["in"], params=b["params"],
                             params_compact=after.get(n, b)["params"], macs=b["macs"],
                             macs_nonzero=b["macs_nonzero"], macs_compact=after.get(n, b)["macs"])
              for n, b in before.items()]
    return Compaction(
        model=compacted, layers=layers, not_compacted=notes,
        params={"dense": dense_params, "nonzero": nonzero_params,
                "compact": sum(p.numel() for p in compacted.parameters())},
        macs={"dense": sum(b["macs"] for b in before.values()),
              "nonzero": sum(b["macs_nonzero"] for b in before.values()),
              "compact": sum(a["macs"] for a in after.values())})


# --- the copy, its outputs and its counts -------------------------------------------------------

def _masked_copy(model: nn.Module, masks: Any) -> nn.Module:
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(True)  # the graph is traced through autograd: frozen layers too
    if masks is None:
        return net
    if not isinstance(masks, Mapping):  # a Masks object
        masks = dict(zip(masks.names, masks.masks))
    params = dict(net.named_parameters())
    for name, mask in masks.items():
        if name not in params or params[name].shape != mask.shape:
            raise ValueError(f"masks: {name} is no parameter of the model of that shape")
        params[name].mul_(mask.to(params[name].device))
    return net


def _outputs(net: nn.Module, args: tuple) -> list[Tensor]:
    out, _ = tree_flatten(net(*args))
    return [t.detach() for t in out if torch.is_tensor(t)]


def _same(outputs: list[Tensor], expected: list[Tensor]) -> bool:
    """Equal to float tolerance: summing fewer zeros changes the rounding, nothing more."""
    if len(outputs) != len(expected):
        return False
    for a, b in zip(outputs, expected):
        if a.shape != b.shape:
            return False
        scale = float(b.abs().max()) + 1.0 if b.numel() else 1.0
        if a.numel() and float((a.double() - b.double()).abs().max()) > 1e-4 * scale:
            return False
    return True


def _layer_names(net: nn.Module) -> dict[int, str]:
    """id -> name of each linear and convolution layer; a layer behind ``SelectInputs`` goes by
    the name of the pair, which is the name it had before."""
    names = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], SelectInputs):
            names[id(module[1])] = name
        elif isinstance(module, _LAYERS) and id(module) not in names:
            names[id(module)] = name
    return names


def _layer_counts(net: nn.Module, args: tuple) -> dict[str, dict[str, int]]:
    """Per named linear/conv layer: units out, inputs, parameters and multiply-adds per sample
    (dense and of its nonzero weights), from one forward pass."""
    counts: dict[str, dict[str, int]] = {}
    names = _layer_names(net)

    def hook(module, inputs, output):
        name = names.get(id(module))
        if name is None or name in counts:
            return
        x, w = inputs[0], module.weight
        batch = x.shape[0] if x.dim() > 1 else 1
        if isinstance(module, nn.Linear):
            positions = x.numel() // max(batch, 1) // module.in_features
            units, inputs_ = module.out_features, module.in_features
        else:
            positions = output[0].numel() // module.out_channels if output.dim() > 1 else 1
            units, inputs_ = module.out_channels, module.in_channels
        counts[name] = {"out": units, "in": inputs_, "params": sum(p.numel() for p in module.parameters()),
                        "macs": positions * w.numel(), "macs_nonzero": positions * int(w.count_nonzero())}

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, _LAYERS)]
    try:
        net(*args)
    finally:
        for h in handles:
            h.remove()
    return counts


# --- the traced groups of tied units ---------------------------------------------------------------

def _compact_groups(net: nn.Module, args: tuple, expected: list[Tensor], notes: list[str]) -> nn.Module:
    """``net`` with the removable units of every group removed, pass after pass until a pass
    removes nothing: a removal can leave other units dead (a unit fed only by silent units is
    silent itself once their constants are folded; one that fed only removed units is unused)."""
    try:
        import torch_pruning as tp
    except ImportError:  # the dependency is declared; a broken install compacts input features only
        notes.append("torch-pruning is not installed: only input features were compacted")
        return net
    found: list[str] = []
    while True:  # each pass that goes on removes at least one unit, so this ends
        net, removed = _compact_pass(tp, net, args, expected, found)
        if not removed:
            break
    notes.extend(dict.fromkeys(found))  # (a group kept whole is found again by every pass)
    return net


def _compact_pass(tp, net: nn.Module, args: tuple, expected: list[Tensor],
                  notes: list[str]) -> tuple[nn.Module, bool]:
    """One pass: ``net`` with the removable units of every group removed, and whether any were;
    where the result would differ from ``expected``, the groups are tried one at a time and
    those that change it are kept."""
    original = copy.deepcopy(net)
    try:
        graph = _trace(tp, net, args)
        plans = _plans(net, graph, args, notes)
    except Exception as err:  # noqa: BLE001 - any model the tracer cannot follow stays whole
        notes.append(f"the graph could not be traced ({type(err).__name__}: {err}); only input "
                     f"features were compacted")
        return original, False
    if not plans:
        return net, False
    for plan in plans:
        plan.apply()
    if _same(_outputs(net, args), expected):
        return net, True
    # Some removal was not exact (an operation the tracer took for channel-preserving): find it.
    net, kept, removed = original, [], False
    for i in range(len(plans)):
        trial = copy.deepcopy(net)
        graph = _trace(tp, trial, args)
        trial_plans = _plans(trial, graph, args, [])
        if i >= len(trial_plans):
            break
        trial_plans[i].apply()
        if _same(_outputs(trial, args), expected):
            net, removed = trial, True
        else:
            kept.append(trial_plans[i].label)
    notes.extend(f"{label}: removing its dead units would change the output; kept" for label in kept)
    return net, removed


def _trace(tp, net: nn.Module, args: tuple):
    """The dependency graph of ``net``, traced through autograd (so with gradients on)."""
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(net, example_inputs=args)


@dataclass
class _Plan:
    """The units of one group to remove, and the biases their constants fold into."""
    label: str
    group: Any
    remove: list[int]
    folds: list[tuple[nn.Module, list[int], Tensor]]  # (layer, its input indices, their constants)

    def apply(self) -> None:
        for layer, idxs, values in self.folds:
            _fold(layer, idxs, values)
        root = self.group[0].dep
        self.group._DG.get_pruning_group(root.target.module, root.handler, self.remove).prune()


def _plans(net: nn.Module, graph, args: tuple, notes: list[str]) -> list[_Plan]:
    """One plan per group with removable units, in the order the graph gives the groups."""
    import torch_pruning as tp

    names = {m: n for n, m in net.named_modules()}
    analyses = []
    for group in graph.get_all_groups(root_module_types=_LAYERS):
        analysis = _analyse(group, graph, tp)
        if analysis is not None:
            analyses.append(analysis)
    # The constants that silent units hand on, read at the inputs of the layers that read them.
    wanted = {id(layer): layer for a in analyses for layer, _, _ in a["consumers"] if a["silent_only"]}
    constants = _input_constants(net, args, list(wanted.values()))
    plans = []
    for a in analyses:
        label = names.get(a["root"], type(a["root"]).__name__)
        if a["mixing"]:
            if a["removable"]:
                notes.append(f"{label}: {len(a['removable'])} dead units tied to an operation across "
                             f"channels ({a['mixing']}); kept")
            continue
        remove, folds = [], []
        for r in a["removable"]:
            if r in a["unused"]:
                remove.append(r)
                continue
            fold = _fold_plan(a["consumers"], r, constants)
            if fold is not None:
                remove.append(r)
                folds.extend(fold)
        if len(remove) == a["channels"]:  # a layer keeps one unit (none would be no layer)
            keep = next((r for r in remove if r in a["unused"]), remove[0])
            remove.remove(keep)
            folds = [f for f in folds if f[3] != keep]
        if remove:
            plans.append(_Plan(label, a["group"], sorted(remove), [(l, i, v) for l, i, v, _ in folds]))
    return plans


def _analyse(group, graph, tp) -> dict[str, Any] | None:
    """Which units of a group (by index in its root layer) are unused or silent, and what
    reads them; None for a group with nothing to remove or that reaches the output."""
    kinds = tp.ops.OPTYPE
    root_items = list(group)
    channels = len(root_items[0].idxs)
    unused = torch.ones(channels, dtype=torch.bool)
    silent = torch.ones(channels, dtype=torch.bool)
    consumers, mixing, has_consumer = [], "", False
    for item in root_items:
        dep, idxs, roots = item.dep, list(item.idxs), list(item.root_idxs)
        module, kind = dep.target.module, dep.target.type
        writes = graph.is_out_channel_pruning_fn(dep.handler)
        if kind == kinds.OUTPUT:
            return None  # the network's output: its units are what it computes
        if kind in (kinds.CONV, kinds.DEPTHWISE_CONV, kinds.LINEAR):
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                mixing = mixing or "a transposed convolution"
                continue
            if writes:
                zero_in = module.weight.detach().flatten(1).abs().sum(1) == 0
                _and_at(silent, roots, zero_in[idxs])
            else:
                if isinstance(module, _CONV) and module.groups != 1:
                    mixing = mixing or "a grouped convolution"
                    continue
                w = module.weight.detach()
                zero_out = (w.abs().sum(0) == 0) if isinstance(module, nn.Linear) else \
                    w.transpose(0, 1).flatten(1).abs().sum(1) == 0
                _and_at(unused, roots, zero_out[idxs])
                consumers.append((module, idxs, roots))
                has_consumer = True
        elif kind in (kinds.BN, kinds.PRELU, kinds.RESHAPE, kinds.CONCAT, kinds.SPLIT):
            continue
        elif kind == kinds.ELEMENTWISE:
            op = str(getattr(module, "_grad_fn", ""))
            if any(word.lower() in op.lower() for word in _MIXING):
                mixing = mixing or op
        else:
            mixing = mixing or kind.name
    if not has_consumer:
        return None
    removable = [r for r in range(channels) if unused[r] or silent[r]]
    if not removable:
        return None
    return {"group": group, "root": root_items[0].dep.target.module, "channels": channels,
            "unused": {r for r in range(channels) if unused[r]}, "removable": removable,
            "silent_only": any(silent[r] and not unused[r] for r in removable),
            "consumers": consumers, "mixing": mixing}


def _and_at(flags: Tensor, roots: list[int], values: Tensor) -> None:
    for r, v in zip(roots, values.tolist()):
        flags[r] &= bool(v)


def _input_constants(net: nn.Module, args: tuple, layers: list[nn.Module]) -> dict[int, tuple[Tensor, Tensor]]:
    """Per layer: the smallest and largest value of each of its input features (linear: the
    last dimension; convolution: dimension 1) over the batch and every position."""
    found: dict[int, tuple[Tensor, Tensor]] = {}

    def hook(module, inputs):
        x = inputs[0].detach()
        x = x.reshape(-1, x.shape[-1]) if isinstance(module, nn.Linear) else x.transpose(0, 1).flatten(1).T
        found[id(module)] = (x.amin(0), x.amax(0))

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        if layers:
            net(*args)
    finally:
        for h in handles:
            h.remove()
    return found


def _fold_plan(consumers, r: int, constants) -> list[tuple[nn.Module, list[int], Tensor, int]] | None:
    """How the constant of the silent unit ``r`` folds into each layer that reads it; None where
    it cannot be folded exactly (not constant on the example, or read across zero padding)."""
    folds = []
    for layer, idxs, roots in consumers:
        mine = [i for i, root in zip(idxs, roots) if root == r]
        if id(layer) not in constants:
            return None
        low, high = constants[id(layer)]
        low, high = low[mine], high[mine]
        if not torch.equal(low, high):
            return None  # not constant after all (an operation between varies it)
        if not bool((low == 0).all()):
            padded = isinstance(layer, _CONV) and layer.padding_mode == "zeros" and (
                layer.padding == "same" or (not isinstance(layer.padding, str) and any(layer.padding)))
            if padded:
                return None
            folds.append((layer, mine, low.clone(), r))
    return folds


def _fold(layer: nn.Module, idxs: list[int], values: Tensor) -> None:
    """Add what the constant inputs ``idxs`` (``values``) contribute to ``layer``'s bias, so that
    the inputs can be removed: exact for a linear layer and an unpadded convolution."""
    w = layer.weight.detach()[:, idxs].double()
    if isinstance(layer, nn.Linear):
        extra = w @ values.double()
    else:
        extra = (w.flatten(2).sum(2) * values.double()).sum(1)
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=layer.weight.dtype, device=layer.weight.device))
    layer.bias.data += extra.to(layer.bias.dtype)


# --- input features -----------------------------------------------------------------------------

def _select_inputs(net: nn.Module) -> None:
    """Put ``SelectInputs`` in front of every linear layer and ungrouped convolution some of
    whose inputs have only zero weights, and drop those inputs from the layer."""
    uses: dict[int, int] = {}
    for _, module in net.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    for name, layer in list(net.named_modules()):
        if not isinstance(layer, _LAYERS) or (isinstance(layer, _CONV) and layer.groups != 1) or not name \
                or uses[id(layer)] > 1:  # a layer shared by two parents: one wrapper would not do
            continue
        w = layer.weight.detach()
        used = (w.abs().sum(0) != 0) if isinstance(layer, nn.Linear) else w.transpose(0, 1).flatten(1).abs().sum(1) != 0
        if bool(used.all()) or not bool(used.any()):
            continue
        index = used.nonzero().squeeze(1)
        layer.weight = nn.Parameter(w.index_select(1, index).clone())
        if isinstance(layer, nn.Linear):
            layer.in_features = index.numel()
        else:
            layer.in_channels = index.numel()
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, child, nn.Sequential(SelectInputs(index, -1 if isinstance(layer, nn.Linear) else 1), layer))

