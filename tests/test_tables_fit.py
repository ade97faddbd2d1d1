"""Console tables fit the width they are printed in and never cut a name.

`sensreg compare`, `sensreg eval` and the run log print rich tables. Each is rendered here into a
console of a given width, as a terminal of that width (or a pipe: 80 columns) would show it:
every line fits, no cell is cut with "…", and every run, group and layer name appears whole, on
one line. Where even the essential columns do not fit, those that can give way do, and the
caption names them.
"""

from __future__ import annotations

import functools
import io

import pytest
from rich.cells import cell_len
from rich.console import Console

from sensreg.commands import reevaluate
from sensreg.records import compare as cmp
from sensreg.models import build_model
from sensreg.method.pruning import Masks, norm_parameter_names, prunable_names, sparsity_stats
from sensreg.records.tables import PIPED_WIDTH, FitTable, layer_table, render_text, stdout_console

import conftest
from test_compare import make_run


def printed(renderable, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, force_terminal=False).print(renderable)
    return buf.getvalue()


def assert_fits(text: str, width: int, names) -> None:
    """Every line at most ``width`` cells, nothing cut, each name whole on one line."""
    lines = text.splitlines()
    assert max(cell_len(line) for line in lines) <= width, text
    assert "…" not in text, text
    for name in names:
        assert any(name in line for line in lines), (name, text)


def headers(text: str) -> str:
    """The header cells of a rendered table (the lines between its top rule and the one below)."""
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    below = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    return " ".join(lines[top + 1:below])


# --- sensreg compare ---------------------------------------------------------------------------

# Names as Hydra makes them (relative to the folder given to sensreg compare)
RUN_NAMES = ["multirun/2026-01-01/12-00-00/0_lenet300_spec", "multirun/2026-01-01/12-00-00/11_lenet300_spec",
             "runs/2026-01-02/09-30-00-123456_lenet300_loss", "lenet5_unspec/seed2"]
GROUP_NAMES = ["lenet300 spec lam=3e-4 prune.target=50x", "lenet300 spec lam=3e-4 prune.target=22x",
               "lenet300_long_spec", "lenet5 spec"]


def rows(names: list[str], grouped: bool) -> list[cmp.Row]:
    out = []
    for k, name in enumerate(names):
        r = cmp.Row(run=name, path=f"/runs/{k}", status="completed", model="lenet300", data="mnist", sens="spec",
                    prune="gmp", lam=3e-4, eta=0.05, epochs=200, epochs_done=200, seed="0 1 2" if grouped else "0",
                    test_error_pct=1.61 + k / 10, remaining_pct=100.0 if k == 2 else 4.5 - k, compression=22.2 + k,
                    wall_time_s=4321.0, samples=10_800_000, config_hash=f"h{k}", n=3 if grouped else 1)
        if grouped:
            r.std = {"test_error_pct": 0.05, "remaining_pct": 0.0, "compression": 0.0, "wall_time_s": 140.0}
        out.append(r)
    out[0].pareto = True
    return out


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("grouped", [False, True])
def test_compare_table_fits_with_whole_names(width, grouped):
    names = GROUP_NAMES if grouped else RUN_NAMES
    text = printed(cmp.rich_table(rows(names, grouped), grouped), width)
    assert_fits(text, width, names)
    # what matters is always there: the name, test error and remaining parameters
    head = headers(text)
    assert ("config" if grouped else "run") in head and "err" in head and "remaining" in head
    assert "λ" not in head and "samples" not in head and "wall" not in head  # --wide columns only
    if width == 120:  # room for the rest of what matters: compression and the budget
        assert "compression" in head and "epochs" in head
        assert "not shown" not in text


def test_compare_table_names_the_columns_it_leaves_out_at_a_narrow_width():
    names = ["outputs/runs/2026-01-02/09-30-00-123456_lenet300_spec"]
    text = printed(cmp.rich_table(rows(names, False)), 80)
    assert_fits(text, 80, names)
    assert "not shown at this width: compression" in text.replace("\n", " ")


def test_compare_status_column_only_where_a_run_is_not_completed():
    table = rows(RUN_NAMES, False)
    assert "status" not in headers(printed(cmp.rich_table(table), 120))
    table[1].status, table[1].n, table[1].test_error_pct = "failed", 0, None
    text = printed(cmp.rich_table(table), 120)
    assert "status" in headers(text) and "failed" in text


def test_wide_shows_every_column_of_compare_md():
    text = printed(cmp.rich_table(rows(GROUP_NAMES, True), True, wide=True), 300)
    head = headers(text)
    for header, _ in cmp.columns(True):
        assert header in head, header
    assert_fits(text, 300, GROUP_NAMES)


def test_a_name_longer_than_the_terminal_is_folded_not_cut():
    name = "outputs/multirun/2026-01-01/12-00-00/0_lenet300_spec_with_a_folder_name_this_long"
    text = printed(cmp.rich_table(rows([name, "short"], False)), 80)
    lines = text.splitlines()
    assert max(map(cell_len, lines)) <= 80 and "…" not in text
    assert name in "".join(line.split("│")[2].strip() for line in lines if line.count("│") > 2)
    assert "1.61" in text and "4.50" in text  # the numbers whole beside it


# --- the per-layer table (sensreg eval, the run log) ---------------------------------------------

@functools.lru_cache(maxsize=None)
def lenet300_stats(params: str = "weights") -> dict:
    model = build_model("lenet300", 10, (1, 28, 28))
    return sparsity_stats(model, (1, 28, 28), prunable_names(model, params))


@functools.lru_cache(maxsize=None)
def resnet20_stats() -> dict:
    """Layer names like layer3.2.bn2.weight, and batch norms not pruned."""
    model = build_model("resnet20", 10, (3, 32, 32))
    names = prunable_names(model, "all")
    assert not set(names) & norm_parameter_names(model)
    Masks(model, names).prune_below_(0.05)
    return sparsity_stats(model, (3, 32, 32), names)


def long_stats() -> dict:
    """Names and counts as long as ResNet-50's on ImageNet."""
    layers = [{"name": "layer4.2.downsample.0.weight", "shape": [2048, 1024, 1, 1], "params": 2_097_152,
               "nonzero": 1_048_576, "remaining_pct": 50.0, "compression": 2.0, "flops_remaining": 1,
               "flops_dense": 2, "prunable": True},
              {"name": "layer4.2.downsample.1.weight", "shape": [2048], "params": 2048, "nonzero": 2048,
               "remaining_pct": 100.0, "compression": 1.0, "flops_remaining": 0, "flops_dense": 0,
               "prunable": False}]
    total = {"params": 2_099_200, "nonzero": 1_050_624, "remaining_pct": 50.05, "compression": 2.0}
    return {"layers": layers, "prunable": total, "all": total, "flops": {"remaining_pct": 50.0}}


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("stats", [lenet300_stats, resnet20_stats, long_stats])
def test_layer_table_fits_with_whole_layer_names(width, stats):
    stats = stats()
    text = printed(layer_table(stats), width)
    assert_fits(text, width, [r["name"] + ("" if r["prunable"] else " (not pruned)") for r in stats["layers"]])


@pytest.mark.parametrize("params", ["all", "weights"])
def test_layer_table_of_lenet300_at_80(params):
    text = printed(layer_table(lenet300_stats(params)), 80)
    head = headers(text)
    assert all(h in head for h in ("layer", "shape", "params", "nonzero", "remaining", "FLOPs"))
    if params == "all":  # the main job: every column
        assert "compression" in head and "not shown" not in text
    else:  # the biases are not pruned, and say so on their line; compression, 100 / remaining, gives way
        assert_fits(text, 80, ["fc1.bias (not pruned)", "fc3.bias (not pruned)"])
        assert "not shown at this width: compression" in text


def test_layer_table_narrow_keeps_name_and_remaining_and_says_what_it_left_out():
    text = printed(layer_table(long_stats()), 80)
    assert_fits(text, 80, ["layer4.2.downsample.0.weight", "layer4.2.downsample.1.weight"])
    assert "remaining" in headers(text) and "50.00%" in text
    assert "not shown at this width" in text


def test_the_run_log_table_is_80_columns():
    # render_text is how run/lifecycle.py writes the per-layer table into train.log
    text = render_text(layer_table(resnet20_stats()))
    assert_fits(text, 80, [r["name"] for r in resnet20_stats()["layers"]])


def test_a_fit_table_renders_again_at_another_width():
    t = layer_table(lenet300_stats())
    narrow, wide = printed(t, 60), printed(t, 200)
    assert "not shown" in narrow and "not shown" not in wide
    assert max(map(cell_len, narrow.splitlines())) <= 60
    assert printed(t, 200) == wide  # the table itself is left as it was


def test_fit_table_keeps_a_column_on_one_line_when_it_may_not_wrap():
    t = FitTable()
    t.add_column("name", no_wrap=True)
    t.add_column("note")
    t.add_row("a b c d e f", "one two three four five six seven eight nine ten")
    text = printed(t, 30)
    assert_fits(text, 30, ["a b c d e f"])


# --- the commands, piped -------------------------------------------------------------------------

def test_stdout_console_is_80_wide_in_a_pipe_unless_columns_says(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert stdout_console().width == PIPED_WIDTH  # pytest's stdout is no terminal
    monkeypatch.setenv("COLUMNS", "132")
    assert stdout_console().width == 132


# A pipe, and no COLUMNS: the tables are 80 columns wide.
sensreg = functools.partial(conftest.sensreg, env={"OMP_NUM_THREADS": "1", "COLUMNS": ""})


def test_compare_piped_fits_80_columns_and_wide_shows_every_column(tmp_path):
    root = tmp_path / "outputs"
    long = "multirun/2026-01-01/12-00-00/0_lenet300_spec_50x"
    for k, target in enumerate(("50x", "22x")):
        make_run(root / f"{long[:-3]}{target}" / f"s{k}", sens="spec", lam=1e-4, seed=k, config_hash=f"h{target}",
                 error_pct=2.0 + k, remaining=4.0 - k, prune={"name": "gmp", "target": target})
    out = sensreg("compare", str(root), "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert_fits(out.stdout, 80, [f"{long}/s0", f"{long[:-3]}22x/s1"])
    grouped = sensreg("compare", str(root), "--group", "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert grouped.returncode == 0, grouped.stderr
    assert_fits(grouped.stdout, 80, ["lenet300 spec prune.target=50x", "lenet300 spec prune.target=22x"])
    wide = sensreg("compare", str(root), "--wide", "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert wide.returncode == 0, wide.stderr
    assert all(h in wide.stdout for h in ("model", "data", "sens", "λ", "η", "samples", "seed", "wall time"))
    assert f"{long}/s0" in wide.stdout and "…" not in wide.stdout
    # compare.md keeps every column whatever the terminal
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| model | data | sens | λ | η | prune | epochs | samples | seed |" in md


def test_eval_output_fits_80_columns_in_a_pipe(monkeypatch, capsys):
    monkeypatch.delenv("COLUMNS", raising=False)
    stats = long_stats()
    result = {"model": "resnet50", "data": "imagenet", "test_error": 0.2412, "test_top5_error": 0.0731,
              "test_loss": 0.9876, "sparsity": stats, "matches_summary": True}
    reevaluate._print_eval(result)
    out = capsys.readouterr().out
    assert_fits(out, 80, [r["name"] for r in stats["layers"]])
    assert "top-1 error 24.12%" in out and "figures match exactly" in out


def test_a_grouped_row_keeps_each_figure_and_its_spread_on_one_line_at_80_columns():
    names = ["lenet300_long80_spec", "lenet300_spec_lam5e-4", "lenet5_dense_start"]
    text = printed(cmp.rich_table(rows(names, True), grouped=True), 80)
    assert_fits(text, 80, names)
    body = [line for line in text.splitlines() if line.startswith("│")]
    assert len(body) == len(names)  # one line per configuration: nothing wraps
    assert all("±" in line for line in body)
