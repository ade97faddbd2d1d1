"""`sensreg eval`: its arguments and console output (the work, a saved model.pt rebuilt and
re-evaluated on its test split and set beside its run's summary, is in ``run/reevaluate.py``)."""

from __future__ import annotations

import json

from sensreg.commands.console import fail, user_errors
from sensreg.run.reevaluate import reevaluate


def run_eval(args: list[str]) -> None:
    """`sensreg eval`; Ctrl-C is one line and exit code 130 (eval writes nothing)."""
    try:
        _run_eval(args)
    except KeyboardInterrupt:
        fail("interrupted; sensreg eval writes no file, so nothing is left half-done. Run it again "
             "to get the figures.", code=130)


def _run_eval(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        print("usage: sensreg eval CHECKPOINT [data.KEY=VALUE ...] [trainer.device=cpu|cuda|auto] [--json]\n\n"
              "Rebuilds the model saved in CHECKPOINT (a run folder's model.pt), evaluates it on the test\n"
              "split of the dataset it was trained on, and counts its non-zero parameters. data.* overrides\n"
              "change how the data is found (e.g. data.root=/elsewhere). Where the checkpoint sits in a\n"
              "run folder, the figures are compared with that run's summary.json.")
        return
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    paths = [a for a in args if "=" not in a]
    if len(paths) != 1:
        fail("sensreg eval takes exactly one checkpoint path (a run folder's model.pt), then optional "
             "data.KEY=VALUE overrides; e.g. `sensreg eval outputs/runs/.../model.pt data.root=data`.")
    overrides, device = {}, "auto"
    import yaml

    for a in args:
        if "=" not in a:
            continue
        key, value = a.split("=", 1)
        if key.startswith("data."):
            overrides[key[5:]] = yaml.safe_load(value)
        elif key == "trainer.device":
            device = value
        else:
            fail(f"sensreg eval accepts data.KEY=VALUE and trainer.device=... overrides, not {key!r}.")

    from sensreg.run.devices import check_device, resolve_device

    problem = check_device(device)
    if problem:
        fail(problem)
    with user_errors():
        result = reevaluate(paths[0], overrides, resolve_device(device))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_eval(result)


def _print_eval(result: dict) -> None:
    from sensreg.records.structure import structure_lines
    from sensreg.records.tables import layer_table, stdout_console

    console = stdout_console(highlight=False)  # the terminal's width, or 80 columns in a pipe
    s = result["sparsity"]
    from sensreg.records.report import shows_top5

    # (--json keeps the top-5 error whatever the classes: it is a measurement, not a display)
    top5 = f", top-5 error {100 * result['test_top5_error']:.2f}%" if "test_top5_error" in result \
        and shows_top5(result.get("num_classes")) else ""
    console.print(f"{result['model']} on {result['data']} test set: top-1 error "
                  f"{100 * result['test_error']:.2f}%{top5}, loss {result['test_loss']:.4f}")
    console.print(f"remaining {s['prunable']['remaining_pct']:.3f}% of prunable parameters "
                  f"({s['prunable']['compression']:.1f}x), {s['all']['remaining_pct']:.3f}% of all "
                  f"({s['all']['compression']:.1f}x); FLOPs left {s['flops']['remaining_pct']:.2f}%")
    console.print(layer_table(s, result.get("structure")))
    for line in structure_lines(result.get("structure")):
        console.print(line)
    match = result["matches_summary"]
    if match is not None:
        console.print("summary.json beside the checkpoint: " + ("figures match exactly" if match else
                      "[bold red]figures differ[/bold red] (different data, device or a modified checkpoint)"))


