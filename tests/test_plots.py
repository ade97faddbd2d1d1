"""The plots' content, read from the matplotlib figures they save: axis limits, legend order,
the Pareto fronts drawn, and the marks of the per-epoch plot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sensreg.records import plots
from sensreg.records.compare import Row, write_plots


@pytest.fixture
def figures(monkeypatch) -> dict:
    """The figure of every PNG saved during the test, by file name."""
    drawn = {}
    real = plots._save

    def save(fig, path):
        drawn[Path(path).name] = fig
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return drawn


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def numbers_in(texts: list[str], word: str) -> list[float]:
    """The number before ``word`` in each text that has one, in order."""
    return [float(m.group(1)) for t in texts if (m := re.search(rf"(\d+(?:\.\d+)?) {word}", t))]


def fronts(ax) -> list[list[tuple[float, float]]]:
    """The staircases drawn (the Pareto fronts), each as its points."""
    return sorted([list(map(tuple, line.get_xydata().tolist())) for line in ax.get_lines()
                   if line.get_drawstyle() == "steps-post" and len(line.get_xdata())])


def spans(ax) -> list[tuple[float, float]]:
    """The x range of each shaded span (axvspan: a Rectangle from matplotlib 3.9, a Polygon before)."""
    xs = [(p.get_x(), p.get_x() + p.get_width()) if hasattr(p, "get_width") else [x for x, _ in p.get_xy()]
          for p in ax.patches]
    return [(float(min(x)), float(max(x))) for x in xs]


def test_natural_key_orders_numbers_by_value():
    budgets = ["20 epochs", "200 epochs", "4 epochs", None, "1 epochs"]
    assert sorted(budgets, key=plots.natural_key) == ["1 epochs", "4 epochs", "20 epochs", "200 epochs", None]
    samples = ["3.24M samples", "999 samples", "540k samples"]
    assert sorted(samples, key=plots.natural_key) == ["999 samples", "540k samples", "3.24M samples"]


def test_layers_plot_runs_from_0_to_100_percent_and_gives_each_size(figures, tmp_path):
    layers = [{"name": "fc1.weight", "params": 235_200, "remaining_pct": 100.0, "compression": 1.0, "prunable": True},
              {"name": "fc1.bias", "params": 300, "remaining_pct": 100.0, "compression": 1.0, "prunable": False},
              {"name": "fc2.weight", "params": 30_000, "remaining_pct": 0.5, "compression": 200.0, "prunable": True}]
    plots.layers_plot(layers, tmp_path / "layers.png")
    (ax,) = figures["layers.png"].axes
    assert ax.get_xlim() == (0.0, 100.0)
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(ticks) == ["fc1.bias (300)", "fc1.weight (235,200)", "fc2.weight (30,000)"]
    # every label stays inside the axis, the full bars' too
    assert all(0 <= t.get_position()[0] <= 100 for t in ax.texts)
    assert {t.get_text() for t in ax.texts} >= {"100% (1.0×)", "100% (1.0×), not pruned", "0.5% (200.0×)"}


def test_pareto_plot_lists_budgets_by_value_and_draws_a_front_per_budget(figures, tmp_path):
    # Across budgets the long run's point would shadow the short runs' second point.
    series = {"spec": [{"x": 1.0, "y": 2.0, "budget": "20 epochs"}, {"x": 2.0, "y": 1.5, "budget": "20 epochs"},
                       {"x": 1.5, "y": 1.0, "budget": "200 epochs"}, {"x": 3.0, "y": 3.0, "budget": "4 epochs"}],
              "l2": [{"x": 2.5, "y": 2.5, "budget": "20 epochs"}, {"x": 4.0, "y": 4.0, "budget": "1 epochs"}]}
    plots.pareto_plot(series, [], tmp_path / "p.png")
    (ax,) = figures["p.png"].axes
    texts = legend_texts(ax)
    assert numbers_in(texts, "epochs") == [1, 4, 20, 200]
    assert [t for t in texts if t.startswith("sens=")] == ["sens=l2 (2)", "sens=spec (4)"]
    assert texts.index("sens=spec (4)") < texts.index("20 epochs, Pareto front (2)")
    assert fronts(ax) == sorted([[(4.0, 4.0)], [(3.0, 3.0)], [(1.0, 2.0), (2.0, 1.5)], [(1.5, 1.0)]])


def test_pareto_plot_of_one_budget_draws_one_front(figures, tmp_path):
    series = {"spec": [{"x": 1.0, "y": 2.0, "budget": "20 epochs"}, {"x": 2.0, "y": 1.5, "budget": "20 epochs"},
                       {"x": 3.0, "y": 1.8, "budget": "20 epochs"}]}
    plots.pareto_plot(series, [], tmp_path / "p.png")
    (ax,) = figures["p.png"].axes
    assert fronts(ax) == [[(1.0, 2.0), (2.0, 1.5)]]
    assert "Pareto front (2)" in legend_texts(ax)


def test_compare_plot_sorts_budgets_numerically_with_a_front_each(figures, tmp_path):
    def row(run, epochs, error, remaining, sens="spec"):
        return Row(run=run, path=run, status="completed", model="lenet300", data="synthetic", sens=sens,
                   prune="search", lam=1e-4, eta=0.1, epochs=epochs, test_error_pct=error, remaining_pct=remaining)

    rows = [row("a", 20, 2.0, 1.0), row("b", 20, 1.5, 2.0), row("c", 200, 1.0, 1.5), row("d", 4, 3.0, 3.0),
            row("e", 1, 4.0, 4.0, sens="l2")]
    write_plots(rows, tmp_path)
    (ax,) = figures["compare_lenet300_synthetic.png"].axes
    assert numbers_in(legend_texts(ax), "epochs") == [1, 4, 20, 200]
    assert [(1.0, 2.0), (2.0, 1.5)] in fronts(ax) and [(1.5, 1.0)] in fronts(ax)


def test_epochs_plot_marks_the_pruning_window_and_the_eta_drop(figures, tmp_path):
    rows = [{"epoch": e, "val_error": 0.05, "remaining_pct": 50.0, "eta": 0.1 if e < 5 else 0.01} for e in range(1, 7)]
    plots.epochs_plot(rows, [], tmp_path / "epochs.png", prune_window=(0, 4), eta_changes=[(5, 0.1)])
    top, bottom = figures["epochs.png"].axes
    assert "pruning (epochs 1–4)" in legend_texts(top) and "η changed" in legend_texts(top)
    for ax in (top, bottom):
        assert spans(ax) == [(0, 4)]
        assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [4]
    assert [t.get_text() for t in top.texts] == ["η ×0.1"]


def test_epochs_plot_draws_many_eta_changes_as_a_curve(figures, tmp_path):
    rows = [{"epoch": e, "val_error": 0.05, "remaining_pct": 50.0, "eta": 0.1 * 0.9 ** e} for e in range(1, 13)]
    changes = [(e, 0.9) for e in range(2, 13)]
    plots.epochs_plot(rows, [3], tmp_path / "epochs.png", prune_window=(2, 3), eta_changes=changes)
    axes = figures["epochs.png"].axes
    assert len(axes) == 3 and axes[2].get_ylabel() == "η (learning rate)"
    assert not any(line.get_linestyle() == "--" for ax in axes[:2] for line in ax.get_lines())
    assert "pruning (epoch 3)" in legend_texts(axes[0])


def test_compare_plot_draws_the_dense_runs_as_a_band_of_their_mean_and_spread(figures, tmp_path):
    def row(run, error, remaining, sens="spec", prune="gmp", seed=0):
        return Row(run=run, path=run, status="completed", model="lenet300", data="synthetic", sens=sens,
                   prune=prune, lam=1e-4, eta=0.1, epochs=60, seed=seed, test_error_pct=error,
                   remaining_pct=remaining)

    dense = [row(f"d{s}", e, 100.0, sens="none", prune="none", seed=s) for s, e in enumerate((1.5, 1.6, 1.7))]
    write_plots([row("a", 2.0, 1.0), row("b", 1.8, 2.0), *dense], tmp_path)
    (ax,) = figures["compare_lenet300_synthetic.png"].axes
    assert "dense, 60 epochs: 1.60 ± 0.10 % (3 seeds)" in legend_texts(ax)
    band = [p for p in ax.patches if hasattr(p, "get_xy")]
    ys = [y for p in band for _, y in (p.get_xy() if not hasattr(p, "get_height")
                                       else [(0, p.get_y()), (0, p.get_y() + p.get_height())])]
    assert min(ys) == pytest.approx(1.5) and max(ys) == pytest.approx(1.7)
    # Not a point at 100 % remaining: the axis stays on the pruned runs.
    assert ax.get_xlim()[1] < 100
