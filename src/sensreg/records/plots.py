"""Every plot sensreg draws, as PNG files. Plain data in, a file out.

matplotlib is imported inside the functions, so that modules importing this one (and every
other sensreg command) start without it. Figures are drawn on the Agg canvas directly, never
through pyplot: no display is needed, and no global backend state is touched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sensreg.atomic import write_atomic

# One colour per sensitivity variant, the same in every plot; other names take the rest in turn.
VARIANT_COLORS = {"spec": "tab:blue", "unspec": "tab:orange", "loss": "tab:green", "l2": "tab:red",
                  "neuron": "tab:purple", "none": "tab:gray"}
_SPARE_COLORS = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan")
# Reference methods get their own marker shapes, so they never look like runs.
_REF_MARKERS = ("D", "^", "s", "v", "P", "X")
_BUDGET_MARKERS = ("o", "s", "^", "D", "v", "P")  # runs of different training budgets
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure(width: float, height: float, rows: int = 1, sharex: bool = False, cols: int = 1):
    """A figure on matplotlib's Agg canvas and its axes, row by row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False)
    return fig, list(axes.flatten())


def _save(fig, path: Path) -> Path:
    write_atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    return Path(path)


def _plain_log_axis(axis, values: Sequence[float]) -> None:
    """A log axis labelled in plain numbers (0.5, 1, 2, 5, 10...) rather than 10^k where the data
    span a few decades at most: a sweep often spans less than one, where the default shows no
    labels at all. Wider spans keep matplotlib's powers of ten."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in values if v > 0]
    span = math.log10(max(positive) / min(positive)) if positive else 0.0
    if span > 3:
        return
    subs = tuple(float(k) for k in range(1, 10)) if span < 0.6 else (1.0, 2.0, 5.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _color(name: str, assigned: dict[str, str]) -> str:
    if name not in assigned:
        assigned[name] = VARIANT_COLORS.get(name) or _SPARE_COLORS[len(assigned) % len(_SPARE_COLORS)]
    return assigned[name]


# A number in a text, and the unit letters natural_key scales it by.
_NUMBER = re.compile(r"(\D+)|(\d+(?:\.\d+)?(?:e[+-]?\d+)?)([kMG]?)")
_UNITS = {"k": 1e3, "M": 1e6, "G": 1e9}


def natural_key(text: Any) -> tuple:
    """Sort key that orders the numbers in a text by value, with k/M/G taken as thousands,
    millions and billions: 4 epochs before 20 epochs, 540k samples before 3.24M samples (plain
    text order would give 20, 200, 4). None (an unknown budget) sorts last."""
    if text is None:
        return ((2, ""),)
    return tuple((0, float(number) * _UNITS.get(unit, 1.0)) if number else (1, word)
                 for word, number, unit in _NUMBER.findall(str(text)))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats (fewer-or-equal x and lower-or-equal y, one of them
    strictly), sorted by x."""
    return sorted(p for p in points
                  if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in points))


_FRONT_STYLES = ("--", ":", "-.", (0, (6, 2, 1, 2, 1, 2)))  # one line style per budget's front


def pareto_plot(series: dict[str, list[dict[str, Any]]], references: Sequence[dict], path: Path,
                title: str = "", dense: Sequence[dict] = (),
                xlabel: str = "remaining parameters (% of prunable, log scale)") -> Path:
    """Test error (%) against remaining parameters (%, log axis), or another cost (``xlabel``).

    ``series`` maps a sensitivity variant to its points, dicts with ``x`` (remaining %), ``y``
    (test error %) and optional ``xerr``/``yerr`` (std, for seed groups) and ``label`` (text
    written beside the point) and ``budget`` (text: points of different budgets get different
    markers, named in the legend).
    Each budget gets its own Pareto front (a staircase: the lowest error reached at or below
    each sparsity), its points ringed: a front across budgets would set a long run against a
    short one. ``references`` are published points, dicts with ``method``, ``remaining_pct``,
    ``compression`` and ``test_error_pct``, drawn as labelled markers. ``dense``: the dense
    networks' test error, dicts with ``y`` (mean %), ``spread`` (std) and ``label`` (with the
    budget), each drawn as a horizontal band across the plot.
    """
    fig, (ax,) = _figure(7.5, 5.0)
    budgets, markers = _budget_markers(series)
    labels, xs = _draw_series(ax, series, budgets, markers)
    on_front = _draw_fronts(ax, series, budgets, markers)
    _draw_dense(ax, dense)
    ref_texts, ref_xs = _draw_references(ax, references)
    _pareto_axes(ax, xs + ref_xs, xlabel, title)
    _pareto_legend(ax)
    _place_labels(fig, ax, labels, _label_obstacles(series, references, on_front), fixed=ref_texts)
    return _save(fig, path)


def _budget_markers(series: dict[str, list[dict[str, Any]]]) -> tuple[list, dict]:
    """The budgets of the points, in natural order, and the marker of each."""
    # Points of different training budgets get different markers (one budget: circles only).
    budgets = sorted({p.get("budget") for pts in series.values() for p in pts}, key=natural_key)
    return budgets, {b: _BUDGET_MARKERS[i % len(_BUDGET_MARKERS)] for i, b in enumerate(budgets)}


def _draw_series(ax, series: dict[str, list[dict[str, Any]]], budgets: list, markers: dict
                 ) -> tuple[list[tuple[str, float, float, str]], list[float]]:
    """Draws each variant's points, a colour per variant and a marker per budget; returns the
    point labels to place (text, x, y, colour) and the points' x values."""
    colors: dict[str, str] = {}
    xs: list[float] = []
    labels: list[tuple[str, float, float, str]] = []
    for name in sorted(series, key=natural_key):
        pts = series[name]
        color = _color(name, colors)
        for budget in budgets:
            group = [p for p in pts if p.get("budget") == budget]
            if not group:
                continue
            xerr = [p.get("xerr") or 0.0 for p in group]
            yerr = [p.get("yerr") or 0.0 for p in group]
            has_err = any(xerr) or any(yerr)
            first = budget == next(b for b in budgets if any(p.get("budget") == b for p in pts))
            ax.errorbar([p["x"] for p in group], [p["y"] for p in group],
                        xerr=xerr if has_err else None, yerr=yerr if has_err else None,
                        fmt=markers[budget], color=color, ms=7, alpha=0.85, capsize=3,
                        label=f"sens={name} ({len(pts)})" if first and len(budgets) == 1 else None)
        if len(budgets) > 1:  # the colour alone: a marker would read as one of the budgets
            ax.plot([], [], ls="-", lw=6, color=color, alpha=0.85, label=f"sens={name} ({len(pts)})")
        labels += [(p["label"], p["x"], p["y"], color) for p in pts if p.get("label")]
        xs += [p["x"] for p in pts]
    return labels, xs


def _draw_fronts(ax, series: dict[str, list[dict[str, Any]]], budgets: list, markers: dict
                 ) -> set[tuple[float, float]]:
    """Draws each budget's Pareto front, its points ringed; returns the points on a front."""
    on_front: set[tuple[float, float]] = set()
    for i, budget in enumerate(budgets):
        front = pareto_front([(p["x"], p["y"]) for pts in series.values() for p in pts if p.get("budget") == budget])
        on_front.update(front)
        fx, fy = zip(*front)
        style = _FRONT_STYLES[i % len(_FRONT_STYLES)]
        ax.scatter(fx, fy, s=190, facecolors="none", edgecolors="black", linewidths=1.4, zorder=3)
        ax.plot(fx, fy, drawstyle="steps-post", color="black", ls=style, lw=1.2, zorder=2,
                label=None if len(budgets) > 1 else f"Pareto front ({len(front)})")
        if len(budgets) > 1:  # one legend entry per budget: its marker (in grey) and its front's line
            ax.plot([], [], marker=markers[budget], mfc="grey", mec="grey", color="black", ls=style, lw=1.2,
                    label=f"{budget or 'budget unknown'}, Pareto front ({len(front)})")
    return on_front


def _draw_dense(ax, dense: Sequence[dict]) -> None:
    """Draws each dense network's test error as a line in a band of its spread."""
    for i, band in enumerate(dense):
        style = _FRONT_STYLES[i % len(_FRONT_STYLES)]
        ax.axhspan(band["y"] - band["spread"], band["y"] + band["spread"], color="tab:green", alpha=0.15, lw=0)
        ax.axhline(band["y"], color="tab:green", ls=style, lw=1.2, label=band["label"])


def _draw_references(ax, references: Sequence[dict]) -> tuple[list, list[float]]:
    """Draws the published points as labelled markers; returns their labels (matplotlib texts)
    and x values."""
    ref_texts, xs = [], []
    for i, ref in enumerate(references):
        x, y = ref["remaining_pct"], ref["test_error_pct"]
        ax.plot([x], [y], marker=_REF_MARKERS[i % len(_REF_MARKERS)], color="black", mfc="gold", ms=10,
                ls="none", zorder=4, label=f"{ref['method']} (published)")
        budget = f"\n{ref['budget']}" if ref.get("budget") else ""
        ref_texts.append(ax.annotate(f"{ref['method']}\n{ref['compression']:g}×, {y:g}%{budget}", (x, y),
                                     xytext=(8, 6), textcoords="offset points", fontsize=8))
        xs.append(x)
    return ref_texts, xs


def _pareto_axes(ax, xs: Sequence[float], xlabel: str, title: str) -> None:
    """Sets up the axes: a log x axis over ``xs``, the labels, the title and the grid."""
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.08)  # room for the point labels at the edges
    _plain_log_axis(ax.xaxis, xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test error (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.3)


def _pareto_legend(ax) -> None:
    """Draws the legend: the variants first, then the budgets, then the published points
    (matplotlib would list the error-bar series last)."""
    handles, names = ax.get_legend_handles_labels()
    rank = lambda name: 0 if name.startswith("sens=") else 2 if name.endswith("(published)") else 1.5 \
        if name.startswith("dense,") else 1  # noqa: E731
    entries = sorted(zip(handles, names), key=lambda e: rank(e[1]))
    ax.legend([h for h, _ in entries], [n for _, n in entries], fontsize=8, loc="best")


def _label_obstacles(series: dict[str, list[dict[str, Any]]], references: Sequence[dict],
                     on_front: set[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """The markers a point label must not cover: x, y and a radius in pixels (ringed points on a
    front and published points are bigger)."""
    obstacles = [(p["x"], p["y"], 9.0 if (p["x"], p["y"]) in on_front else 5.0)
                 for pts in series.values() for p in pts]
    return obstacles + [(r["remaining_pct"], r["test_error_pct"], 7.0) for r in references]


# Where a point label may go, in points from the point: right-below first, then around it.
_LABEL_SPOTS = ((6, -12, "left"), (6, 5, "left"), (-6, -12, "right"), (-6, 5, "right"),
                (6, 14, "left"), (6, -21, "left"), (-6, 14, "right"), (-6, -21, "right"))


def _place_labels(fig, ax, labels: Sequence[tuple[str, float, float, str]],
                  obstacles: Sequence[tuple[float, float, float]], fixed: Sequence = ()) -> None:
    """Write each label beside its point where it overlaps no other label, no marker (``obstacles``:
    x, y and a radius in pixels), no ``fixed`` text and not the legend; a label with no free spot
    is left out (the table has the figures). Runs of a sweep often land close together, where
    fixed offsets would print the labels over each other."""
    from matplotlib.transforms import Bbox

    if not labels:
        return
    fig.draw_without_rendering()  # final limits and layout, so display positions hold
    renderer = fig.canvas.get_renderer()
    centres = ax.transData.transform([(x, y) for x, y, _ in obstacles])
    taken = [Bbox.from_bounds(px - r, py - r, 2 * r, 2 * r) for (px, py), (_, _, r) in zip(centres, obstacles)]
    taken += [t.get_window_extent(renderer) for t in fixed]
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    inside = ax.get_window_extent(renderer)
    for text, x, y, color in labels:
        for dx, dy, ha in _LABEL_SPOTS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7,
                              color=color, ha=ha)
            box = ann.get_window_extent(renderer)
            fits = (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0
                    and box.y1 <= inside.y1)
            if fits and not any(box.overlaps(t) for t in taken):
                taken.append(box)
                break
            ann.remove()


def epochs_plot(rows: Sequence[dict[str, float]], decision_epochs: Sequence[int], path: Path,
                test_error_pct: float | None = None, prune_window: tuple[float, float] | None = None,
                eta_changes: Sequence[tuple[int, float]] = ()) -> Path:
    """Validation error and remaining parameters per epoch (epoch e spans e-1 to e on the x axis).

    ``decision_epochs``: thresholds applied at the end of these epochs (dotted lines).
    ``prune_window``: (start, end) on the x axis, shaded: where the pruning happened.
    ``eta_changes``: (epoch, factor) where η was multiplied by ``factor`` from that epoch on,
    drawn as dashed lines at its start; more than a few (a cosine schedule, a warmup) are drawn
    instead as the η curve on a second axis.
    """
    from matplotlib.ticker import MaxNLocator

    fig, (top, bottom) = _figure(7.5, 5.5, rows=2, sharex=True)
    epochs = [r["epoch"] for r in rows]
    top.plot(epochs, [100 * r["val_error"] for r in rows], "o-", color="tab:blue", label="validation error")
    if test_error_pct is not None:
        top.plot([epochs[-1]], [test_error_pct], "*", color="tab:red", ms=12, label="test error (end)")
    top.set_ylabel("error (%)")
    # Every run starts dense (all masks set): 100 % at epoch 0 anchors the curve.
    remaining = [100.0] + [r["remaining_pct"] for r in rows]
    bottom.plot([0] + epochs, remaining, "o-", color="tab:green")
    bottom.set_yscale("log")
    _plain_log_axis(bottom.yaxis, remaining)
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.set_ylabel("remaining parameters (%, log)")
    bottom.set_xlabel("epoch")
    few_changes = len(eta_changes) <= _MOST_ETA_LINES
    for ax in (top, bottom):
        legend = ax is top  # one legend entry for each kind of mark
        if prune_window is not None:
            start, end = prune_window
            span = f"epoch {end:g}" if end - start <= 1 else f"epochs {start + 1:g}–{end:g}"
            ax.axvspan(start, end, color="tab:orange", alpha=0.12, lw=0, label=f"pruning ({span})" if legend else None)
        for i, e in enumerate(decision_epochs):
            ax.axvline(e, color="black", ls=":", lw=0.8,
                       label="threshold applied" if legend and i == 0 else None)
        if few_changes:
            for i, (e, factor) in enumerate(eta_changes):
                ax.axvline(e - 1, color="tab:red", ls="--", lw=1.0, label="η changed" if legend and i == 0 else None)
                if legend:
                    ax.annotate(f"η ×{factor:.3g}", (e - 1, 1), xycoords=("data", "axes fraction"),
                                xytext=(-3, -3), textcoords="offset points", ha="right", va="top",
                                fontsize=8, color="tab:red")
        ax.grid(True, alpha=0.3)
    if eta_changes and not few_changes:
        eta = top.twinx()
        etas = [r.get("eta") for r in rows]
        # Each epoch's η held from its start to its end.
        eta.plot([0] + epochs, etas + etas[-1:], drawstyle="steps-post", color="tab:red", lw=1.0, alpha=0.7)
        eta.set_ylabel("η (learning rate)", color="tab:red")
        eta.tick_params(axis="y", labelcolor="tab:red", labelsize=8)
    top.legend(fontsize=8)
    top.set_title("per epoch", fontsize=11)
    return _save(fig, path)


_MOST_ETA_LINES = 6  # more η changes than this are drawn as a curve, not one line each


def thresholds_plot(decisions: Sequence[dict[str, float]], path: Path, tolerance: float | None = None) -> Path:
    """Each pruning decision: the threshold T applied, and the validation loss before and after.
    Decisions made between validation passes (``prune=gmp``, by step) are drawn by
    ``gradual_plot`` instead."""
    from matplotlib.ticker import MaxNLocator

    if any(d.get("val_loss_before") is None for d in decisions):
        return gradual_plot(decisions, path)
    fig, (top, bottom) = _figure(7.5, 5.5, rows=2, sharex=True)
    epochs = [d["epoch"] for d in decisions]
    top.plot(epochs, [d["threshold"] for d in decisions], "o-", color="tab:purple")
    for d in decisions:
        top.annotate(f"{d['remaining_pct_before']:.3g}→{d['remaining_pct_after']:.3g}%",
                     (d["epoch"], d["threshold"]), xytext=(4, 6), textcoords="offset points", fontsize=8)
    top.set_yscale("log")
    _plain_log_axis(top.yaxis, [d["threshold"] for d in decisions])
    top.margins(x=0.12, y=0.2)  # room for the labels
    top.set_ylabel("threshold T (log)")
    top.set_title("threshold decisions (labels: remaining % before→after)", fontsize=11)
    width = 0.38
    bottom.bar([e - width / 2 for e in epochs], [d["val_loss_before"] for d in decisions], width,
               label="val loss before", color="tab:blue")
    bottom.bar([e + width / 2 for e in epochs], [d["val_loss_after"] for d in decisions], width,
               label="val loss after", color="tab:orange")
    if tolerance is not None:
        bottom.plot(epochs, [(1 + tolerance) * d["val_loss_before"] for d in decisions], "_", ms=18,
                    color="black", label=f"bound (1 + {tolerance:g})·before")
    bottom.set_ylabel("validation loss")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def gradual_plot(decisions: Sequence[dict[str, Any]], path: Path) -> Path:
    """Pruning by steps (``prune=gmp``): the remaining % after each pruning, and the largest |w|
    it cut, against the training step."""
    fig, (top, bottom) = _figure(7.5, 5.5, rows=2, sharex=True)
    steps = [d.get("step", d["epoch"]) for d in decisions]
    top.plot(steps, [d["remaining_pct_after"] for d in decisions], ".-", color="tab:green")
    top.set_ylabel("remaining % (prunable)")
    top.set_title("pruning by steps (gmp): remaining parameters and the largest |w| cut", fontsize=11)
    bottom.plot(steps, [d["threshold"] for d in decisions], ".-", color="tab:purple")
    bottom.set_yscale("log")
    _plain_log_axis(bottom.yaxis, [d["threshold"] for d in decisions])
    bottom.set_ylabel("largest |w| pruned (log)")
    bottom.set_xlabel("training step" if "step" in decisions[0] else "epoch")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def layers_plot(layers: Sequence[dict[str, Any]], path: Path) -> Path:
    """Remaining parameters per tensor, as horizontal bars on 0-100 % labelled with the
    remaining % and the compression; each tensor's name gives its size."""
    fig, (ax,) = _figure(7.5, 1.2 + 0.42 * len(layers))
    ordered = list(layers)[::-1]  # the first tensor at the top
    names = [f"{r['name']} ({r['params']:,})" if isinstance(r.get("params"), int) else r["name"] for r in ordered]
    values = [r["remaining_pct"] for r in ordered]
    ax.barh(names, values, color=["tab:blue" if r["prunable"] else "lightgray" for r in ordered])
    for i, r in enumerate(ordered):
        text = f"{r['remaining_pct']:.3g}% ({r['compression']:.1f}×)" + ("" if r["prunable"] else ", not pruned")
        # The axis ends at 100 %: a long bar carries its label inside, at its end.
        inside = r["remaining_pct"] > 70
        ax.text(r["remaining_pct"] + (-1 if inside else 1), i, text, va="center", ha="right" if inside else "left",
                fontsize=8, color="white" if inside and r["prunable"] else "black")
    ax.set_xlim(0, 100)
    ax.set_xlabel("remaining parameters (%)")
    ax.set_title("per-layer sparsity at the end (beside each name: its number of parameters)", fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def histogram_plot(values, path: Path, xlabel: str, title: str, marker: float | None = None,
                   marker_label: str | None = None) -> Path:
    """A histogram of positive values on log-spaced bins; ``marker`` draws a vertical line."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    positive = values[values > 0]
    fig, (ax,) = _figure(7.5, 4.2)
    if positive.size:
        low, high = positive.min(), positive.max()
        bins = np.logspace(np.log10(low), np.log10(high if high > low else low * 10), 60)
        ax.hist(positive, bins=bins, color="tab:blue", alpha=0.85)
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis, [low, high])
    if marker is not None and marker > 0:
        ax.axvline(marker, color="tab:red", ls="--", label=marker_label)
        if marker_label:
            ax.legend(fontsize=8)
    zeros = values.size - positive.size
    ax.set_title(title + (f" ({zeros:,} zero values not shown)" if zeros else ""), fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def insensitivity_plot(per_tensor: dict[str, Any], path: Path, title: str, most: int = 16) -> Path:
    """Small multiples: the histogram of the insensitivity on [0, 1] of each tensor (the first
    ``most``), with the mean and the share below 0.5 in each panel's title."""
    import numpy as np

    names = list(per_tensor)[:most]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = _figure(3.2 * cols, 2.4 * rows + 0.6, rows=rows, cols=cols)
    bins = np.linspace(0.0, 1.0, 41)
    for ax, name in zip(axes, names):
        v = np.asarray(per_tensor[name], dtype=np.float64)
        ax.hist(v, bins=bins, color="tab:green", alpha=0.85)
        ax.axvline(0.5, color="tab:red", ls="--", lw=1)
        ax.set_title(f"{name}: mean {v.mean():.2f}, <0.5 {100 * (v < 0.5).mean():.0f}%", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    more = len(per_tensor) - len(names)
    fig.suptitle(title + (f" ({more} more tensors not shown)" if more else ""), fontsize=10)
    return _save(fig, path)
