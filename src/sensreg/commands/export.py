"""`sensreg export RUN [--out DIR]`: its arguments and console output (the work is in
``run/export.py``)."""

from __future__ import annotations

from sensreg.commands.console import arg_parser, fail, stop_code, stopped_by, user_errors

DESCRIPTION = (
    "Compacts the pruned network of a finished run (removes every neuron, filter and input that\n"
    "cannot change its output, folding constant outputs into the next layer's bias) and writes it\n"
    "as files that run without sensreg: model.pt2 (torch.export) and model.onnx (with the export\n"
    "extra), into RUN/export or --out DIR, a folder that must not exist yet. Each file is loaded\n"
    "back and its test error recomputed against the run's. export.json holds parameters and\n"
    "multiply-adds (dense, nonzero, compacted), the units each layer keeps, the test errors and the\n"
    "inference speed of the dense and compacted networks (batch 1 latency, batch 256 throughput,\n"
    "median of repeats after warm-up, on --threads CPU threads).")


def run_export(args: list[str]) -> None:
    """`sensreg export`; Ctrl-C is one line and exit 130 (the folder is written under a
    temporary name and renamed when complete, so nothing half-written is left)."""
    parser = arg_parser("sensreg export", DESCRIPTION,
                         "examples:\n  sensreg export outputs/reference/lenet300_long80_spec/seed0 --out /tmp/l300\n"
                         "  sensreg export outputs/runs/<date>/<run> --threads 4 --no-speed")
    parser.add_argument("run", metavar="RUN", help="a finished run folder")
    parser.add_argument("--out", metavar="DIR", default=None, help="the folder to write (default: RUN/export)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the speed measurement (default 1)")
    parser.add_argument("--no-speed", action="store_true", help="leave out the speed measurement")
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="where the test data is found, as in sensreg eval (data.root=PATH)")
    ns = parser.parse_intermixed_args(args)  # (data.KEY=VALUE may follow --out DIR)
    if ns.threads < 1:
        fail(f"--threads {ns.threads}: give a number of threads of at least 1.")
    overrides = _data_overrides(ns.overrides)
    from sensreg.run.export import export_run

    try:
        with user_errors():
            exported = export_run(ns.run, ns.out, ns.threads, speed=not ns.no_speed, data_overrides=overrides)
    except OSError as err:
        fail(f"could not write the export ({err.strerror or err}); nothing was left half-written. Free space, "
             f"or give a writable folder with --out DIR.", code=1)
    except KeyboardInterrupt as err:
        fail(f"sensreg export stopped by {stopped_by(err)}; nothing was left half-written. Run it again to export.",
             code=stop_code(err))
    _print(exported)
    if not exported.matches_run:
        fail(f"the exported network's test error differs from the run's: {exported.record['test_error']}; "
             f"the files in {exported.folder} are kept for inspection.", code=1)


def _data_overrides(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("data.") or len(key) <= 5:
            fail(f"sensreg export takes data.KEY=VALUE overrides after the run folder, not {item!r}.")
        out[key[5:]] = yaml.safe_load(value)
    return out


def _print(exported) -> None:
    from sensreg.records.tables import FitTable, stdout_console

    r = exported.record
    console = stdout_console(highlight=False)
    table = FitTable(title=f"{r['model']} on {r['data']}: the dense and the compacted network")
    for column in ("", "dense", "nonzero", "compacted", "dense / compacted"):
        table.add_column(column, justify="left" if not column else "right")
    for key, what in (("params", "parameters"), ("macs", "multiply-adds per image")):
        d, n, c = r[key]["dense"], r[key]["nonzero"], r[key]["compact"]
        table.add_row(what, f"{d:,}", f"{n:,}", f"{c:,}", f"{d / c:.1f}x" if c else "-")
    speed = r.get("speed")
    for runtime, dense, compact in (("torch", "dense", "compact"), ("ONNX Runtime", "onnx_dense", "onnx")):
        if not speed or compact not in speed["batch1_us"]:
            continue
        latency, rate = speed["batch1_us"], speed["batch256_per_s"]
        table.add_row(f"latency, batch 1, {runtime}", f"{latency[dense]:,.0f} µs", "", f"{latency[compact]:,.0f} µs",
                      f"{latency[dense] / latency[compact]:.1f}x")
        table.add_row(f"images/s, batch {speed['batch']}, {runtime}", f"{rate[dense]:,.0f}", "",
                      f"{rate[compact]:,.0f}", f"{rate[compact] / rate[dense]:.1f}x")
    console.print(table)
    first = next(iter(r["inputs"]), None)
    kept = [f"input {r['inputs'][first][0]}/{r['inputs'][first][1]}"] if first else []
    console.print("units kept: " + ", ".join(kept + [f"{name} {k}/{n}" for name, (k, n) in r["units"].items()]))
    errors = r["test_error"]
    console.print("test error: " + ", ".join(f"{name} {100 * v:.2f}%" for name, v in errors.items() if v is not None)
                  + (" (all equal)" if exported.matches_run else ""))
    if speed:
        console.print(f"speed: {speed['threads']} CPU thread(s), median of repeats after warm-up")
    for note in exported.notes:
        console.print(note, markup=False)
    console.print(f"wrote {', '.join(r['files'].values())} and export.json in {exported.folder}")
