"""Experiment trackers (`logger=`): the run as TensorBoard and MLflow see it.

`logger=none` (the default) tracks nothing; `logger=tensorboard`, `logger=mlflow` or
`logger=[tensorboard,mlflow]` pick trackers, whose settings are `logger.tensorboard.*` and
`logger.mlflow.*`. Each tracked run logs:

- its resolved config as hyperparameters (section.key);
- every metrics.csv column per epoch (step = the epoch), and each threshold decision;
- the final summary (test error, remaining %, compression, per-layer remaining %);
- the report (`sensreg report`'s report.md and plots), written into the run folder at the end.

Offline by default: TensorBoard's event files go into the run folder (so `tensorboard --logdir`
of a sweep folder shows its runs together); MLflow writes a local SQLite store under
outputs/mlflow/ unless logger.mlflow.tracking_uri says otherwise, groups a sweep's runs in one
experiment, and its run id goes into summary.json. Only process 0 of a distributed run tracks.
A resumed run continues its tracker runs: the same MLflow run, and TensorBoard events from the
checkpoint's epoch on replacing what a stopped process wrote after it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from sensreg.errors import UserError

log = logging.getLogger("sensreg")

# logger.<name> -> (the module it needs, the extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
TENSORBOARD_DIR = "tensorboard"  # inside the run folder
MLFLOW_STORE = Path("outputs") / "mlflow"  # below the working folder, unless a tracking_uri is given
DEFAULT_EXPERIMENT = "sensreg"  # MLflow's experiment of single runs; a sweep gets its own


class TrackerError(UserError):
    """A logger config that cannot work (unknown tracker, package missing)."""


def check_logger_config(logger_cfg: dict[str, Any] | None) -> list[str]:
    """The names of the trackers ``logger_cfg`` asks for; raises TrackerError for an unknown
    one or one whose package is not installed (before any training)."""
    cfg = dict(logger_cfg or {})
    unknown = sorted(set(cfg) - set(TRACKERS))
    if unknown:
        raise TrackerError(f"logger: unknown tracker(s) {', '.join(unknown)}; choose logger=none, "
                           f"logger=tensorboard, logger=mlflow or logger=[tensorboard,mlflow].")
    for name in cfg:
        if cfg[name] is not None and not isinstance(cfg[name], dict):
            raise TrackerError(f"logger.{name}={cfg[name]!r} must hold settings (logger.{name}.KEY=VALUE).")
        module, extra = TRACKERS[name]
        try:
            __import__(module)
        except ImportError:
            raise TrackerError(f"logger={name} needs the {module} package, which is not installed: "
                               f"pip install -e '.[{extra}]' (or pip install {module}).") from None
    mlflow_cfg = cfg.get("mlflow") or {}
    unknown = sorted(set(mlflow_cfg) - {"tracking_uri", "experiment"})
    if unknown:
        raise TrackerError(f"logger.mlflow: unknown key(s) {', '.join(unknown)}; known: experiment, tracking_uri.")
    return sorted(cfg)


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"sens": {"lam": 1e-4}} -> {"sens.lam": 1e-4}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The final figures of a completed summary, as finite numbers: test error, validation
    error, remaining % and compression, and each layer's remaining %."""
    out = {}
    for key in ("test_error", "test_top5_error", "test_loss", "val_error", "val_loss", "remaining_pct",
                "compression", "remaining_pct_all", "compression_all"):
        value = summary.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[f"final/{key}"] = float(value)
    for layer in (summary.get("sparsity") or {}).get("layers", []):
        if isinstance(layer, dict) and isinstance(layer.get("remaining_pct"), (int, float)):
            out[f"final/remaining_pct/{layer['name']}"] = float(layer["remaining_pct"])
    return out


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A metrics.csv row but its epoch, as numbers (empty and non-numeric cells left out)."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _guarded(method):
    """A tracker that fails (a store that cannot be written, a server gone) is a warning and is
    dropped: the run goes on, and its folder holds everything the tracker would have."""
    import functools

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if not self.names:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - see the docstring
            log.warning("warning: experiment tracking (%s) stopped: %s: %s; the run goes on, its "
                        "folder holds every figure", ", ".join(self.names), type(err).__name__, err)
            self.names, self._tb, self._mlflow_run = [], None, None
            return None

    return call


class Trackers:
    """The trackers of one run (none: every call does nothing). ``group``: the sweep folder of
    a job of a sweep, else None."""

    def __init__(self, names: list[str], logger_cfg: dict[str, Any] | None, group: Path | None = None):
        self.names, self.cfg, self.group = list(names), dict(logger_cfg or {}), group
        self._tb = None
        self._mlflow_run = None
        self._decisions_logged = 0
        self._params: dict[str, Any] = {}  # the config as section.key: value (start fills it in)

    def __bool__(self) -> bool:
        return bool(self.names)

    @_guarded
    def start(self, run_dir: Path, config: dict[str, Any], summary: dict[str, Any], resumed_epoch: int | None,
              decisions_done: int = 0) -> None:
        """Open the tracker runs, or continue those in ``summary["trackers"]`` (a resumed run,
        ``resumed_epoch`` epochs and ``decisions_done`` threshold decisions logged already);
        their ids go into ``summary``. Only process 0 calls this."""
        ids = summary.setdefault("trackers", {})
        self._decisions_logged = decisions_done
        self._params = params = flat(config)
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events a stopped process wrote after the checkpoint are dropped.
            self._tb = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR),
                                     purge_step=resumed_epoch + 1 if resumed_epoch else None)
            ids["tensorboard"] = TENSORBOARD_DIR
            if not resumed_epoch:
                self._tb.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))
        if "mlflow" in self.names:
            new_run = ids.get("mlflow_run_id") is None
            self._mlflow_run = _start_mlflow(self.cfg.get("mlflow") or {}, run_dir, self.group, ids.get("mlflow_run_id"))
            ids["mlflow_run_id"] = self._mlflow_run.info.run_id
            ids["mlflow_tracking_uri"] = _mlflow().get_tracking_uri()
            if new_run:  # a resumed run's were logged by its start (MLflow refuses them twice)
                _mlflow().log_params({k: _param(v) for k, v in params.items()}, run_id=ids["mlflow_run_id"])

    @_guarded
    def log_epoch(self, row: dict[str, Any], decisions: list[dict[str, Any]]) -> None:
        """One metrics.csv row, and the threshold decisions made since the last call."""
        step = int(row["epoch"])
        metrics = epoch_metrics(row)
        new = decisions[self._decisions_logged:]
        self._decisions_logged = len(decisions)
        for decision in new:
            value = decision.get("threshold")
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics["decision/threshold"] = float(value)
            if isinstance(decision.get("remaining_pct"), (int, float)):
                metrics["decision/remaining_pct"] = float(decision["remaining_pct"])
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._mlflow_run is not None:
            _mlflow().log_metrics(_mlflow_keys(metrics), step=step, run_id=self._mlflow_run.info.run_id)

    @_guarded
    def finish(self, run_dir: Path, summary: dict[str, Any]) -> None:
        """The final summary, and the run's report with its plots."""
        final = summary_metrics(summary)
        step = int(summary.get("epochs_completed") or 0)
        images, report = _write_report(run_dir)
        if self._tb is not None:
            for key, value in final.items():
                self._tb.add_scalar(key, value, step)
            for image in images:
                self._tb.add_image(f"report/{image.stem}", _read_png(image), step)
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self._params.items()}
            self._tb.add_hparams(hparams, {k: v for k, v in final.items() if "/remaining_pct/" not in k}, run_name=".")
            self._tb.flush()
        if self._mlflow_run is not None:
            mlflow, run_id = _mlflow(), self._mlflow_run.info.run_id
            mlflow.log_metrics(_mlflow_keys(final), step=step, run_id=run_id)
            client = mlflow.tracking.MlflowClient()
            for path in [run_dir / "summary.json", run_dir / "metrics.csv", run_dir / "config.yaml", *images,
                         *([report] if report else [])]:
                if path.exists():
                    client.log_artifact(run_id, str(path))

    @_guarded
    def close(self, status: str) -> None:
        """End the tracker runs: ``status`` is the summary's (completed, failed, interrupted)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._mlflow_run is not None:
            state = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            _mlflow().tracking.MlflowClient().set_terminated(self._mlflow_run.info.run_id, state)
            self._mlflow_run = None


NO_TRACKERS = Trackers([], None)


def _mlflow():
    import mlflow

    return mlflow


def _param(value: Any) -> str:
    return str(value)[:6000]  # MLflow's limit on a parameter's value


def _mlflow_keys(metrics: dict[str, float]) -> dict[str, float]:
    # MLflow keys allow letters, digits, _ - . / and spaces.
    return {k.replace(":", "_"): v for k, v in metrics.items()}


def _start_mlflow(cfg: dict[str, Any], run_dir: Path, group: Path | None, run_id: str | None):
    mlflow = _mlflow()
    for name in ("mlflow", "alembic"):  # their INFO lines (database migrations) are noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = cfg.get("tracking_uri")
    artifacts = None
    if not uri:
        store = (Path.cwd() / MLFLOW_STORE).absolute()
        store.mkdir(parents=True, exist_ok=True)
        uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
    mlflow.set_tracking_uri(uri)
    client = mlflow.tracking.MlflowClient(uri)
    if run_id is not None:  # a resumed run continues its MLflow run
        client.update_run(run_id, status="RUNNING")
        return client.get_run(run_id)
    name = cfg.get("experiment") or (_group_name(group) if group is not None else DEFAULT_EXPERIMENT)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name, artifact_location=artifacts)
        except mlflow.exceptions.MlflowException:  # a parallel job of the sweep made it first
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    return client.create_run(experiment_id, run_name=run_dir.name, tags={"sensreg.run_dir": str(run_dir)})


def _group_name(group: Path) -> str:
    """A sweep's experiment name: its folder, relative to the working folder where it is below it."""
    try:
        return f"sweep {group.absolute().relative_to(Path.cwd())}"
    except ValueError:
        return f"sweep {group.absolute()}"


def _write_report(run_dir: Path) -> tuple[list[Path], Path | None]:
    """sensreg report of the finished run (its plots are what the trackers show); a report that
    cannot be drawn is a warning, never the run's failure."""
    from sensreg.run.report import write_report

    try:
        report = write_report(run_dir, batches=4)
    except Exception as err:  # noqa: BLE001 - the run itself is complete and saved
        log.warning("warning: the report for the trackers could not be written: %s", err)
        return [], None
    return list(report.images), report.path


def _read_png(path: Path):
    """The PNG as a (3, H, W) uint8 tensor, as SummaryWriter.add_image takes it."""
    import matplotlib.image
    import torch

    pixels = torch.from_numpy(matplotlib.image.imread(path)[..., :3].copy())  # floats in [0, 1]
    return (pixels * 255).round().to(torch.uint8).permute(2, 0, 1)


def group_of_job() -> Path | None:
    """The sweep folder of this Hydra job if it is a job of a sweep, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir)
    return None

