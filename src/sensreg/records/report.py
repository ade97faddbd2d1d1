"""`sensreg report RUN_DIR`: report.md and PNGs for one run folder.

What a run folder holds is read as it is: a running, failed or interrupted run gets a report of
what it has so far, and every plot that cannot be drawn (no metrics yet, no checkpoint, the
dataset not on disk) is left out with a note in report.md saying why, never a crash.

The sensitivity histogram recomputes the run's own sensitivity variant on the final model:
the model is rebuilt from model.pt, the run's dataset is loaded (its config's data section),
and S is averaged over a few shuffled training batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sensreg.records import plots
from sensreg.atomic import write_atomic
from sensreg.errors import UserError
from sensreg.records.config_keys import upgrade_config
from sensreg.records.folder import CONFIG_NAME, METRICS_NAME, SUMMARY_NAME, RunFolder, RunRecord
from sensreg.records.structure import structure_lines
from sensreg.records.tables import markdown_table

REPORT_NAME = "report.md"
# Top-5 error says something only with many classes: with 10, nearly every image has its class
# among five guesses, and a top-5 error of 0.03 % reads as a result where there is none.
TOP5_MIN_CLASSES = 100
# A longer list of pruning decisions (gradual pruning makes one every few hundred steps) is
# shown as this many rows at most: the first, every k-th and the last.
MOST_DECISION_ROWS = 10


def shows_top5(num_classes: int | None) -> bool:
    """Whether the top-5 error is worth showing for a dataset of ``num_classes`` classes (None:
    not known, shown where it was measured)."""
    return num_classes is None or num_classes >= TOP5_MIN_CLASSES


class ReportError(UserError, ValueError):
    """RUN_DIR is not something a report can be made of; the message says why."""


@dataclass
class RunReport:
    path: Path  # report.md
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # plots left out, and why


def report_for_trackers(run_dir: Path) -> tuple[list[Path], Path | None]:
    """The report of a finished run written into its folder for the experiment trackers to show
    (its plots, and the markdown file); one that cannot be drawn is a warning, never the run's
    failure."""
    try:
        report = write_report(run_dir, batches=4)
    except Exception as err:  # noqa: BLE001 - the run itself is complete and saved
        logging.getLogger("sensreg").warning("warning: the report for the trackers could not be written: %s", err)
        return [], None
    return list(report.images), report.path


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, batches: int = 10,
                 data_root: str | None = None) -> RunReport:
    """Write report.md and its PNGs for ``run_dir`` into ``out_dir`` (default: the run folder).

    ``batches``: how many training batches the end-of-run sensitivity is averaged over (0: no
    sensitivity histogram). ``data_root`` replaces the data.root of the run's config.
    """
    run_dir = Path(run_dir)
    folder = RunFolder.given(run_dir, "report", ReportError)
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    result = RunReport(out / REPORT_NAME)
    notes = result.notes

    record = folder.read()
    notes += _reading_notes(record)
    summary, config, rows = record.summary or {}, record.config, record.metrics
    decisions = [d for d in summary.get("thresholds") or [] if isinstance(d, dict)]
    sparsity = summary.get("sparsity") if isinstance(summary.get("sparsity"), dict) else {}
    images: dict[str, Path] = {}
    draw = _drawer(images, notes)
    _draw_epochs(draw, out, summary, rows, decisions, notes)
    _draw_thresholds(draw, out, config, decisions, notes)
    _draw_layers(draw, out, sparsity, notes)
    final = _final_state(run_dir, config, batches, data_root, notes)
    _draw_final(draw, out, final, decisions)

    result.images = list(images.values())
    text = _markdown(run_dir, out, summary, config, rows, decisions, sparsity, images, final, notes)
    write_atomic(result.path, lambda f: f.write(text))
    return result


# --- the plots ---------------------------------------------------------------------------------

def _drawer(images: dict[str, Path], notes: list[str]) -> Callable[..., None]:
    """``draw(key, what, fn, *args, **kwargs)``: calls the plot function ``fn`` and keeps the PNG
    it returns in ``images`` under ``key``; a plot it cannot draw becomes a note instead."""
    def draw(key: str, what: str, fn, *args, **kwargs) -> None:
        try:
            images[key] = fn(*args, **kwargs)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:  # odd summary contents
            notes.append(f"{what}: not drawn ({type(err).__name__}: {err}).")

    return draw


def _draw_epochs(draw: Callable[..., None], out: Path, summary: dict, rows: list[dict], decisions: list[dict],
                 notes: list[str]) -> None:
    """Draws epochs.png from metrics.csv; ``notes`` get why it is missing or short."""
    done = summary.get("epochs_completed")
    if rows:
        test = summary.get("test_error")
        # Read from what the run did, not from its config, whose positions may count from the
        # end or be fractions of the run.
        draw("epochs", "per-epoch plot", plots.epochs_plot, rows,
             [d.get("epoch") for d in decisions if "step" not in d], out / "epochs.png",
             test_error_pct=100 * test if isinstance(test, (int, float)) else None,
             prune_window=pruning_window(decisions), eta_changes=eta_changes(rows))
        if isinstance(done, int) and len(rows) < done:
            notes.append(f"per-epoch plot: metrics.csv holds {len(rows)} readable row(s) of the {done} epochs "
                         f"summary.json reports: the rest of the file is damaged.")
    elif isinstance(done, int) and done > 0:
        notes.append(f"per-epoch plot: not drawn: metrics.csv holds no readable epoch row, though summary.json "
                     f"reports {done} finished epoch(s). The file is damaged; the other files of the run "
                     f"are read as they are.")
    else:
        notes.append("per-epoch plot: no epoch finished yet (metrics.csv is missing or empty).")


def _draw_thresholds(draw: Callable[..., None], out: Path, config: dict, decisions: list[dict],
                     notes: list[str]) -> None:
    """Draws thresholds.png from the pruning decisions; a note if there were none."""
    if decisions:
        draw("thresholds", "threshold plot", plots.thresholds_plot, decisions, out / "thresholds.png",
             tolerance=(config.get("prune") or {}).get("tolerance")
             if (config.get("prune") or {}).get("name") == "search" else None)
    else:
        notes.append("threshold plot: no threshold was applied in this run.")


def _draw_layers(draw: Callable[..., None], out: Path, sparsity: dict, notes: list[str]) -> None:
    """Draws layers.png from summary.json's per-layer table; a note if it has none."""
    if sparsity.get("layers"):
        draw("layers", "per-layer plot", plots.layers_plot, sparsity["layers"], out / "layers.png")
    else:
        notes.append("per-layer plot: summary.json has no per-layer table (the run has not finished).")


def _draw_final(draw: Callable[..., None], out: Path, final: dict, decisions: list[dict]) -> None:
    """Draws the histograms of the final model's |w|, sensitivity and insensitivity, those it has."""
    if final.get("weights") is not None:
        draw("weights", "|w| histogram", plots.histogram_plot, final["weights"], out / "weights_hist.png",
             xlabel="|w| of kept prunable parameters (log scale)",
             title=f"|w| at the end: {final['weights'].size:,} kept", marker=_last_threshold(decisions),
             marker_label="last threshold T")
    if final.get("sensitivity") is not None:
        draw("sensitivity", "sensitivity histogram", plots.histogram_plot, final["sensitivity"],
             out / "sensitivity_hist.png", xlabel="sensitivity S of kept prunable parameters (log scale)",
             title=f"sensitivity ({final['variant']}) at the end, mean over {final['batches']} batches",
             marker=1.0, marker_label="S = 1: not shrunk at or above")
    if final.get("insensitivity"):
        draw("insensitivity", "insensitivity histograms", plots.insensitivity_plot, final["insensitivity"],
             out / "insensitivity_hist.png",
             title=f"insensitivity max(0, 1 - S) of the kept regularized entries, mean over {final['batches']} batches")


# --- reading ---------------------------------------------------------------------------------

def pruning_window(decisions: list[dict]) -> tuple[int, int] | None:
    """The span of the epochs in which thresholds were applied, on the per-epoch plot's axis
    (epoch e spans e-1 to e); None if none was."""
    epochs = [d["epoch"] for d in decisions if isinstance(d.get("epoch"), int)]
    return (min(epochs) - 1, max(epochs)) if epochs else None


def eta_changes(rows: list[dict]) -> list[tuple[int, float]]:
    """(epoch, factor): from that epoch on, η was ``factor`` times that of the epoch before."""
    changes, before = [], None
    for r in rows:
        eta = _finite(r.get("eta"))
        if eta is not None and before and not math.isclose(eta, before, rel_tol=1e-9):
            changes.append((r["epoch"], eta / before))
        before = eta
    return changes


def _num_classes(summary: dict, config: dict, final: dict) -> int | None:
    """The number of classes of the run's dataset: from model.pt, else from the dataset's name
    or its config (the synthetic dataset's num_classes); None if none says."""
    from sensreg.data.registry import DATASETS

    if isinstance(final.get("num_classes"), int):
        return final["num_classes"]
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    spec = DATASETS.get(summary.get("data") or data.get("name"))
    if spec is not None and spec.num_classes is not None:
        return spec.num_classes
    return data.get("num_classes") if isinstance(data.get("num_classes"), int) else None


def _reading_notes(record: RunRecord) -> list[str]:
    """What report.md says about the run's files that could not be read."""
    notes = []
    summary_error = record.errors.get(SUMMARY_NAME)
    if isinstance(summary_error, FileNotFoundError):
        notes.append("summary.json is missing: status and results unknown.")
    elif summary_error is not None:
        notes.append(f"summary.json cannot be read (corrupt or half-written: {type(summary_error).__name__}); "
                     f"the report uses metrics.csv and config.yaml only.")
    if CONFIG_NAME in record.errors:
        notes.append(f"config.yaml cannot be read ({type(record.errors[CONFIG_NAME]).__name__}).")
    if METRICS_NAME in record.errors:
        notes.append(f"metrics.csv cannot be read ({type(record.errors[METRICS_NAME]).__name__}).")
    return notes


def _last_threshold(decisions: list[dict]) -> float | None:
    t = decisions[-1].get("threshold") if decisions else None
    return t if isinstance(t, (int, float)) and t > 0 else None


# --- the final model: |w| and the run's own sensitivity ----------------------------------------

def _final_state(run_dir: Path, config: dict, batches: int, data_root: str | None,
                 notes: list[str]) -> dict[str, Any]:
    """|w| and S of the kept prunable entries of model.pt; notes say what could not be done."""
    ckpt_path = RunFolder(run_dir).model_path
    if not ckpt_path.exists():
        notes.append("|w| and sensitivity histograms: no model.pt (the run has not finished).")
        return {}
    import torch

    from sensreg.records.checkpoint import CheckpointError, load_checkpoint, saved_network

    try:
        ckpt = load_checkpoint(ckpt_path)
        model = saved_network(ckpt)
        model.load_state_dict(ckpt["state_dict"])
    except (CheckpointError, KeyError, RuntimeError) as err:
        notes.append(f"|w| and sensitivity histograms: model.pt cannot be used ({err}).")
        return {}
    masks = {n: m.bool() for n, m in ckpt["masks"].items()}
    params = dict(model.named_parameters())
    kept = lambda tensors: torch.cat([tensors[n].detach()[m].flatten() for n, m in masks.items()])  # noqa: E731
    state: dict[str, Any] = {"weights": kept(params).abs().double().numpy(), "num_classes": ckpt["num_classes"]}
    if state["weights"].size == 0:
        notes.append("|w| and sensitivity histograms: every prunable parameter was pruned.")
        return {"num_classes": ckpt["num_classes"]}
    cfg = upgrade_config(config or ckpt.get("config") or {})  # config.yaml first: it is what the user reads
    if batches <= 0:
        notes.append("sensitivity histogram: not asked for (--batches 0).")
        return state
    try:
        sens, insens, variant = _sensitivity(model, cfg, batches, data_root)
    except _Skip as why:
        notes.append(f"sensitivity histogram: {why}")
        return state
    # Per regularized tensor, the insensitivity of its kept entries (all entries where not pruned).
    per_layer = {n: (v[masks[n]] if n in masks else v.flatten()).double().numpy() for n, v in insens.items()}
    state.update(sensitivity=kept(sens).double().numpy(), variant=variant, batches=batches,
                 insensitivity={n: v for n, v in per_layer.items() if v.size})
    return state


class _Skip(Exception):
    """The sensitivity cannot be computed here; the message goes into report.md."""


def _sensitivity(model, cfg: dict, num_batches: int, data_root: str | None):
    """The run's sensitivity variant on the final model, averaged over ``num_batches`` batches."""
    import torch
    import torch.nn.functional as F

    from sensreg.data import batches
    from sensreg.method.neuron import UnitError
    from sensreg.method.per_sample import PerSampleError
    from sensreg.method.pruning import prunable_names
    from sensreg.method.regularizer import insensitivity, rescale_
    from sensreg.method.sensitivity import batched_vjps_are_faster, get_variant, gradients_and_sensitivity, tape_for

    try:  # (the config as this version reads it: upgrade_config)
        sens_cfg, prune_cfg, trainer, data_cfg = cfg["sens"], cfg["prune"], cfg["trainer"], cfg["data"]
        variant = get_variant(sens_cfg["name"])
    except (KeyError, TypeError) as err:
        raise _Skip(f"the run's config does not name its sensitivity variant ({err}).") from None
    if not variant.uses_sensitivity:
        raise _Skip(f"variant {variant.name!r} has no sensitivity ({variant.description}).")
    ds = _dataset(data_cfg, data_root)
    seed, batch_size = int(trainer["seed"]), int(trainer["batch_size"])
    order, classes = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    regularized = [names.index(n) for n in prunable_names(model, sens_cfg["params"], bool(prune_cfg["batchnorm"]))]
    total = [torch.zeros_like(p) for p in params]
    total_bar = [torch.zeros_like(params[i]) for i in regularized]
    model.eval()  # no dropout or batch statistics: S of the network as it will be used
    try:
        tape = tape_for(variant, model, params, sens_cfg["reduction"])
    except (PerSampleError, UnitError) as err:
        raise _Skip(str(err)) from None
    done = 0
    for x, y in batches(ds.train, batch_size, shuffle=True, generator=order):
        logits = _logits(model, x, tape)
        _, s = gradients_and_sensitivity(variant, logits, F.cross_entropy(logits, y), y, params,
                                         sens_cfg["output"], sens_cfg["classes"],
                                         classes, batched_vjps_are_faster(model), tape=tape)
        for t, v in zip(total, s):
            t += v.detach()
        # The insensitivity as the training step takes it: of each batch's S, brought to scale.
        scaled = [s[i].detach().clone() for i in regularized]
        rescale_(scaled, sens_cfg["scale"], float(sens_cfg["gamma"]), sens_cfg["scale_over"])
        for t, v in zip(total_bar, scaled):
            t += insensitivity(v)
        done += 1
        if done == num_batches:
            break
    return ({n: t / max(1, done) for n, t in zip(names, total)},
            {names[i]: t / max(1, done) for i, t in zip(regularized, total_bar)}, variant.name)


def _dataset(data_cfg: dict, data_root: str | None):
    """The run's dataset as its config's data section says, from ``data_root`` if given;
    _Skip if it cannot be loaded."""
    from sensreg.data.config import DataConfig
    from sensreg.data import DatasetMissing, load_dataset

    known = {f.name for f in fields(DataConfig)}
    data = DataConfig(**{k: v for k, v in data_cfg.items() if k in known})
    if data_root:
        data.root = data_root
    try:
        return load_dataset(data.name, data.root, data.val_fraction, data.split_seed, "cpu", **data.loader_options())
    except (DatasetMissing, KeyError) as err:
        raise _Skip(f"the run's dataset could not be loaded, so it is left out ({err}). "
                    f"Give its location with --data-root.") from None


def _logits(model, x, tape):
    """The model's logits for ``x``, recorded on ``tape`` where there is one."""
    if tape is None:
        return model(x)
    with tape.record():
        return model(x)


# --- report.md ---------------------------------------------------------------------------------

def _f(v: Any, fmt: str = ".3g", suffix: str = "") -> str:
    return f"{v:{fmt}}{suffix}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _pct(v: Any) -> str:
    return _f(100 * v if isinstance(v, (int, float)) else None, ".2f", " %")


def _markdown(run_dir: Path, out: Path, summary: dict, config: dict, rows: list[dict], decisions: list[dict],
              sparsity: dict, images: dict[str, Path], final: dict, notes: list[str]) -> str:
    """The text of report.md."""
    # Each image's link: its name where it lies beside report.md, else its path.
    links = {key: p.name if p.parent == out else str(p) for key, p in images.items()}
    lines = [*_heading(run_dir, summary), *_configuration(summary, config), *_result(summary, config, rows, final),
             *_per_epoch(rows, links), *_threshold_decisions(decisions, links), *_per_layer(sparsity, links),
             *_weights_and_sensitivity(final, links), *_notes(notes)]
    return "\n".join(lines) + "\n"


def _image(links: dict[str, str], key: str, alt: str) -> list[str]:
    """The lines that show the image ``key`` (its link as report.md gives it), if it was drawn."""
    return ["", f"![{alt}]({links[key]})"] if key in links else []


def _section(config: dict, key: str) -> dict:
    """The config's section ``key``, {} if it has none."""
    return config.get(key) if isinstance(config.get(key), dict) else {}


def _heading(run_dir: Path, s: dict) -> list[str]:
    """The title and the line on the run's status, start, device and commit."""
    return [f"# Run report: {run_dir.name}", "",
            f"`{run_dir}` · status **{s.get('status', 'unknown')}**"
            + (f" ({s['error']})" if s.get("error") else "")
            + f" · started {s.get('started', '-')} · device {s.get('device', '-')}"
            + f" · git commit {str(s.get('git_commit') or '-')[:10]}", ""]


def _configuration(s: dict, config: dict) -> list[str]:
    """The Configuration section: a one-row table of what the run was set to do."""
    def d(key: str) -> dict:
        return _section(config, key)

    return ["## Configuration", "", *markdown_table(
        ["model", "data", "sensitivity", "λ", "η", "epochs", "seed", "prune", "config hash"], [[
            str(s.get("model") or d("model").get("name", "-")), str(s.get("data") or d("data").get("name", "-")),
            str(s.get("sens") or d("sens").get("name", "-"))
            + (f" ({d('sens').get('output')})" if d("sens").get("output") else ""),
            _f(d("sens").get("lam")), _f(d("optim").get("lr")), str(d("trainer").get("epochs", "-")),
            str(s.get("seed", d("trainer").get("seed", "-"))),
            f"{d('prune').get('name', '-')} (tolerance {d('prune').get('tolerance')}, "
            f"patience {d('prune').get('patience')})"
            if d("prune").get("name") == "search" else str(d("prune").get("name", "-")),
            str(s.get("config_hash", "-"))]])]


def _result(s: dict, config: dict, rows: list[dict], final: dict) -> list[str]:
    """The Result section: the final figures, or how far the run got."""
    lines = ["", "## Result", ""]
    if "test_error" not in s:
        lines.append(f"No final result yet (status {s.get('status', 'unknown')}); "
                     f"{len(rows)} epoch(s) in metrics.csv.")
        return lines
    flops = s.get("flops") or {}
    top5 = s.get("test_top5_error") is not None and shows_top5(_num_classes(s, config, final))
    lines += markdown_table(["test error", *(["top-5 error"] if top5 else []), "remaining (prunable)",
                             "compression", "remaining (all)", "compression (all)", "FLOPs left",
                             "wall time"], [[
        _pct(s.get("test_error")), *([_pct(s.get("test_top5_error"))] if top5 else []),
        _f(s.get("remaining_pct"), ".3f", " %"),
        _f(s.get("compression"), ".1f", "×"), _f(s.get("remaining_pct_all"), ".3f", " %"),
        _f(s.get("compression_all"), ".1f", "×"), _f(flops.get("remaining_pct"), ".2f", " %"),
        _f(s.get("wall_time_s"), ".0f", " s")]])
    if isinstance(s.get("structure"), dict):  # what the pruned network costs to run, compacted
        lines += ["", *(f"{line}." if not line.endswith(".") else line
                        for line in structure_lines(s["structure"]))]
    return lines


def _per_epoch(rows: list[dict], links: dict[str, str]) -> list[str]:
    """The Per epoch section: a row per epoch of metrics.csv, and its plot; none without rows."""
    if not rows:
        return []
    return ["", "## Per epoch", "", *markdown_table(
        ["epoch", "λ", "train loss", "val loss", "val error", "remaining", "threshold",
         "mean insensitivity", "below 0.5", "time"], [[
            str(r["epoch"]), _f(r.get("lam")), _f(r.get("train_loss"), ".4f"), _f(r.get("val_loss"), ".4f"),
            _pct(r.get("val_error")), _f(r.get("remaining_pct"), ".3g", " %"), _f(r.get("threshold")),
            _f(_finite(r.get("insens_mean")), ".3f"), _pct(_finite(r.get("insens_below_half"))),
            _f(r.get("seconds"), ".1f", " s")] for r in rows]),
        *_image(links, "epochs", "validation error and remaining parameters per epoch")]


def _threshold_decisions(decisions: list[dict], links: dict[str, str]) -> list[str]:
    """The Threshold decisions section: the table of them (condensed if long), and their plot."""
    lines = ["", "## Threshold decisions", ""]
    if not decisions:
        return lines + ["No threshold was applied."]
    shown = condensed(decisions)
    numbered = len(shown) < len(decisions)  # then a column says which decision each row is
    if numbered:
        lines.append(f"{len(decisions)} pruning decisions in all; {len(shown)} of them below (the first, "
                     f"then one in every {shown[1][0]}, and the last); the plot shows them all.\n")
    # Gradual pruning decides by step, between validation passes: its rows say the step and
    # the sparsity reached, where the threshold search's say the validation loss.
    by_step = any("step" in x for x in decisions)
    # Σ|w| escaped: a bare | inside a cell would split the header into more cells than the rows have.
    head = [*(["#"] if numbered else []), "epoch", *(["step", "sparsity"] if by_step else []),
            "threshold T", "pruned", "remaining before", "remaining after", "Σ\\|w\\| removed",
            *([] if by_step else ["val loss before", "val loss after"])]
    lines += markdown_table(head, [[
        *([str(i + 1)] if numbered else []), str(x.get("epoch", "-")),
        *([_f(x.get("step"), ","), _pct(x.get("sparsity"))] if by_step else []),
        _f(x.get("threshold")), _f(x.get("pruned"), ","),
        _f(x.get("remaining_pct_before"), ".3g", " %"), _f(x.get("remaining_pct_after"), ".3g", " %"),
        _f(x.get("removed_l1_pct"), ".3g", " %"),
        *([] if by_step else [_f(x.get("val_loss_before"), ".4f"), _f(x.get("val_loss_after"), ".4f")])]
        for i, x in shown])
    lines.append("\nΣ|w| removed: the share of the kept weights' absolute sum that the pruning cut. "
                 "Far below the share of weights it cut, the regularizer had already driven them "
                 "to zero.")
    return lines + _image(links, "thresholds", "threshold decisions")


def _per_layer(sparsity: dict, links: dict[str, str]) -> list[str]:
    """The Per-layer sparsity section: a row per tensor, and its plot; none without the table."""
    if not sparsity.get("layers"):
        return []
    return ["", "## Per-layer sparsity", "", *markdown_table(
        ["layer", "shape", "params", "nonzero", "remaining", "compression"], [[
            r["name"] + ("" if r.get("prunable") else " (not pruned)"), "×".join(map(str, r.get("shape", []))),
            _f(r.get("params"), ","), _f(r.get("nonzero"), ","), _f(r.get("remaining_pct"), ".3g", " %"),
            _f(r.get("compression"), ".1f", "×")] for r in sparsity["layers"]]),
        *_image(links, "layers", "remaining parameters per layer")]


def _weights_and_sensitivity(final: dict, links: dict[str, str]) -> list[str]:
    """The Weights and sensitivity at the end section, with their histograms; none without model.pt."""
    if final.get("weights") is None:
        return []
    w = final["weights"]
    lines = ["", "## Weights and sensitivity at the end", "",
             f"{w.size:,} kept prunable parameters; median |w| {_f(float(_median(w)))}.",
             *_image(links, "weights", "histogram of |w|")]
    if final.get("sensitivity") is not None:
        sv = final["sensitivity"]
        lines += ["", f"Sensitivity `{final['variant']}` of the final model, mean over {final['batches']} "
                  f"training batches: median {_f(float(_median(sv)))}; {100 * float((sv >= 1).mean()):.2f} % of "
                  f"the kept parameters have S ≥ 1 (insensitivity 0: not shrunk)."]
        lines += _image(links, "sensitivity", "histogram of the sensitivity")
    if final.get("insensitivity"):
        lines += _insensitivity(final["insensitivity"], links)
    return lines


def _insensitivity(per_tensor: dict[str, Any], links: dict[str, str]) -> list[str]:
    """The insensitivity per regularized tensor: a paragraph, a table and the histograms."""
    return ["", "Insensitivity max(0, 1 − S) per regularized tensor, S brought to scale as in training "
            "(`sens.scale`): the factor on λ in each weight's shrink. A mean near 1 with nothing below "
            "0.5 means the shrink is plain weight decay.", "",
            *markdown_table(["tensor", "kept", "mean insensitivity", "below 0.5", "zero (S ≥ 1)"], [[
                name, f"{v.size:,}", _f(float(v.mean())), f"{100 * float((v < 0.5).mean()):.1f} %",
                f"{100 * float((v <= 0).mean()):.1f} %"] for name, v in per_tensor.items()]),
            *_image(links, "insensitivity", "insensitivity histogram per tensor")]


def _notes(notes: list[str]) -> list[str]:
    """The Notes section: a bullet per plot or file left out, and why; none without notes."""
    return ["", "## Notes", "", *(f"- {n}" for n in notes)] if notes else []


def condensed(decisions: list[dict], most: int = MOST_DECISION_ROWS) -> list[tuple[int, dict]]:
    """(index, decision) of the decisions a table shows: all of them up to ``most``, else the
    first, every k-th and the last, at most ``most`` rows."""
    n = len(decisions)
    if n <= most:
        return list(enumerate(decisions))
    k = -(-(n - 1) // (most - 1))  # ceil: the last row is added below
    picked = list(range(0, n - 1, k)) + [n - 1]
    return [(i, decisions[i]) for i in picked]


def _finite(v: Any) -> Any:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _median(values) -> float:
    import numpy as np

    return float(np.median(values)) if len(values) else float("nan")
