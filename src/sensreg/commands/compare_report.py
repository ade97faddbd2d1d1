"""`sensreg compare` and `sensreg report`: their arguments and console output (the work is in
``records/compare/`` and ``records/report.py``)."""

from __future__ import annotations

from rich.console import Console

from sensreg.commands.console import arg_parser, err_console, fail, user_errors


def _compare_parser():
    from sensreg.records.compare import DEFAULT_SORT, KEYS

    parser = arg_parser(
        "sensreg compare",
        "Finds every run folder below the PATHs (single runs, sweeps, whole outputs/ trees; globs\n"
        "are expanded), prints one table row per run (running, failed and interrupted runs\n"
        "included), stars the Pareto-optimal runs (no run of the same network and data has both\n"
        "fewer remaining parameters and a lower test error), and writes compare.csv, compare.md\n"
        "and one plot per network and dataset, compare_<model>_<data>.png, into the first PATH\n"
        "(or --out DIR). Folders with an unreadable summary.json are listed and skipped.",
        f"keys for --where and --sort: {', '.join(KEYS)}\n\n"
        "examples:\n  sensreg compare outputs/\n"
        "  sensreg compare outputs/multirun/2026-01-01/* --where sens=spec,loss --where 'lam<1e-3'\n"
        "  sensreg compare outputs/ --group --sort error --wide\n"
        "  sensreg compare outputs/ --sort=-remaining --out /tmp/cmp")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders (or globs) holding run folders")
    parser.add_argument("--sort", metavar="KEYS", default=None,
                        help=f"comma-separated keys; -KEY for descending, written --sort=-KEY "
                             f"(default: {DEFAULT_SORT})")
    parser.add_argument("--where", action="append", default=[], metavar="EXPR",
                        help="keep rows where KEY=VALUE (also !=, <, <=, >, >=; '=' takes a,b,c "
                             "alternatives and shell patterns); repeat to combine")
    parser.add_argument("--group", action="store_true",
                        help="one row per configuration (runs sharing a config hash, i.e. differing "
                             "only in the seed): mean ± std over the seeds that finished, and n; "
                             "named by its preset (experiment=NAME), else network and variant, with "
                             "the config keys that tell apart groups that would share a name")
    parser.add_argument("--wide", action="store_true",
                        help="every column in the terminal (as in compare.md); by default the name, "
                             "test error, remaining, compression and epochs")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="where compare.csv, compare.md and the plots go (default: the first PATH)")
    parser.add_argument("--no-plots", action="store_true", help="write the table files only")
    return parser


def run_compare(args: list[str]) -> None:
    from rich.markup import escape
    from rich.measure import Measurement

    from sensreg.records.compare import compare, rich_table
    from sensreg.records.tables import stdout_console

    ns = _compare_parser().parse_args(args)
    try:
        with user_errors():
            result = compare(ns.paths, where=ns.where, sort=ns.sort, group=ns.group, out=ns.out,
                             plots=not ns.no_plots)
    except OSError as err:
        fail(f"could not write the comparison files ({err}); free space, or choose a writable folder with --out DIR.", code=1)
    # The table fits the terminal, or 80 columns where the output goes to a pipe or a file.
    console = stdout_console(highlight=False)
    table = rich_table(result.rows, result.grouped, wide=ns.wide)
    if ns.wide:
        # Every column was asked for: where the terminal is narrower than they need, the table
        # keeps its own width (for `less -S`, or a file) rather than fold them into slivers.
        console.width = max(console.width, Measurement.get(console, console.options.update_width(10_000), table).maximum)
    console.print(table)
    for s in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {s.path}: {s.reason}", markup=True)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", markup=True)
    what = "configurations" if result.grouped else "runs"
    console.print(f"{len(result.rows)} {what}, {sum(r.pareto for r in result.rows)} Pareto-optimal"
                  + (f", {len(result.skipped)} folder(s) skipped" if result.skipped else "")
                  + f"; wrote {', '.join(p.name for p in result.files)} in {result.out_dir}"
                  + ("" if ns.wide else " (--wide: every column)"))


def run_report(args: list[str]) -> None:
    from sensreg.records.report import write_report

    parser = arg_parser(
        "sensreg report",
        "Writes report.md and PNGs for one run folder: error and remaining parameters per epoch,\n"
        "the threshold decisions, per-layer sparsity, and histograms of |w| and of the run's own\n"
        "sensitivity at the end (recomputed from model.pt on a few training batches of the run's\n"
        "dataset). Unfinished runs get a report of what they have so far.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (it holds summary.json)")
    parser.add_argument("--out", metavar="DIR", default=None, help="where the files go (default: RUN_DIR)")
    parser.add_argument("--batches", type=int, default=10, metavar="N",
                        help="training batches the sensitivity is averaged over (default 10; 0: skip it)")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="where the run's dataset is, if not at the data.root it was trained with")
    ns = parser.parse_args(args)
    if ns.batches < 0:
        fail("sensreg report: --batches must be 0 or more.")
    try:
        with user_errors():
            result = write_report(ns.run_dir, ns.out, ns.batches, ns.data_root)
    except OSError as err:
        fail(f"could not write the report ({err}); free space, or choose a writable folder with --out DIR.", code=1)
    console = Console(highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {result.path} and {len(result.images)} plot(s): "
                  f"{', '.join(p.name for p in result.images) or 'none'}")
