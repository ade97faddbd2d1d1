"""Record the compacted network's structure in run folders made before runs recorded it.

    python scripts/record_structure.py outputs/reference outputs/study

For every finished run folder below the given folders whose summary.json has no ``structure``,
the network is rebuilt from its model.pt and compacted (``sensreg.records.structure``, checked on
the first test images, as a run does at its end), and the result is written into summary.json.
Nothing is retrained: ``sensreg eval RUN`` recomputes the same figures and says whether they
match. ``--force`` records it again where it is present.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sensreg.atomic import write_json
from sensreg.records.compare import find_run_dirs
from sensreg.data import load_test_split
from sensreg.records.checkpoint import load_checkpoint, saved_network
from sensreg.data.config import DataConfig
from sensreg.records.folder import RunFolder
from sensreg.records.structure import network_structure, structure_lines


def record(run_dir: Path, force: bool) -> str:
    folder = RunFolder(run_dir)
    summary = folder.read().summary
    if not isinstance(summary, dict) or summary.get("status") != "completed" or not folder.model_path.is_file():
        return "skipped (not a finished run with a model.pt)"
    if "structure" in summary and not force:
        return "skipped (recorded already)"
    ckpt = load_checkpoint(folder.model_path)
    data = DataConfig(**ckpt["config"]["data"])
    test, _, _ = load_test_split(data.name, data.root, "cpu", **data.loader_options())
    model = saved_network(ckpt)
    model.load_state_dict(ckpt["state_dict"])
    summary["structure"] = network_structure(model, test, ckpt["masks"])
    write_json(folder.summary_path, summary)
    return structure_lines(summary["structure"])[0]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--force", action="store_true", help="record it again where it is recorded")
    args = parser.parse_args(argv)
    for run_dir in find_run_dirs(args.folders):
        print(f"{run_dir}: {record(run_dir, args.force)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
