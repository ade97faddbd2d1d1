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

Nothing outside the process can stall a run: every tracker call runs off the training thread
and is given up after a bounded time, or soon after a stop (``bounded``). A tracker that cannot
be reached or written at the start is one warning line and the run goes on without it, unless
``logger.NAME.required=true``, which refuses the run (exit 2); one that fails later is dropped
the same way.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sensreg.atomic import check_sqlite_writable
from sensreg.errors import UserError
from sensreg.records.config_keys import flat
from sensreg.records.summary import MetricsRow

log = logging.getLogger("sensreg")

# logger.<name> -> (the module it needs, the extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
TENSORBOARD_DIR = "tensorboard"  # inside the run folder
MLFLOW_STORE = Path("outputs") / "mlflow"  # below the working folder, unless a tracking_uri is given
DEFAULT_EXPERIMENT = "sensreg"  # MLflow's experiment of single runs; a sweep gets its own
# The settings each tracker takes. required: a tracker that cannot be used at the start refuses
# the run (exit 2) rather than being left out of it.
KEYS = {"tensorboard": ("required",), "mlflow": ("experiment", "required", "tracking_uri")}


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
    for name, known in KEYS.items():
        settings = cfg.get(name) or {}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise TrackerError(f"logger.{name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}.")
        if not isinstance(settings.get("required", False), bool):
            raise TrackerError(f"logger.{name}.required={settings['required']!r} must be true or false.")
    return sorted(cfg)


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


def epoch_metrics(row: MetricsRow) -> dict[str, float]:
    """A metrics.csv row but its epoch, as numbers (empty and non-numeric cells left out)."""
    return {k: float(v) for k, v in asdict(row).items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


# No tracker may hold up a run for long: each call runs off the training thread and is given
# up after CALL_LIMIT_S (a server that accepts and never answers, a store that is retried), or
# STOP_GRACE_S after a stop was asked for (Ctrl-C is not kept waiting on a tracker). MLflow's own
# HTTP requests time out and retry within that limit (REQUEST_LIMITS, unless set already).
CALL_LIMIT_S = 15.0
STOP_GRACE_S = 1.5
REQUEST_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


# What to do about a required tracker that cannot be used.
FIXES = {"tensorboard": "Make the run folder's tensorboard/ writable",
         "mlflow": "Start the tracking server or repair the store, or choose another logger.mlflow.tracking_uri"}


class TrackerTimeout(Exception):
    """A tracker call given up on (too slow, or the run was stopped meanwhile)."""


def bounded(call, limit_s: float = CALL_LIMIT_S, stopping=lambda: False):
    """``call()``'s result, run in a thread of its own that is waited for at most ``limit_s``
    seconds, and at most STOP_GRACE_S once ``stopping()`` says the run is being stopped; raises
    what ``call`` raised, or TrackerTimeout. A call given up on runs on in its daemon thread,
    whose exit nothing waits for. Signals are handled meanwhile (the wait is in short slices)."""
    done, outcome = threading.Event(), {}

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread, never printed here
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=work, name="sensreg-tracker", daemon=True).start()
    deadline, stopped = time.monotonic() + limit_s, False
    while not done.wait(0.1):
        if not stopped and stopping():
            stopped, deadline = True, min(deadline, time.monotonic() + STOP_GRACE_S)
        if time.monotonic() > deadline:
            raise TrackerTimeout("the run was stopped while it waited for an answer" if stopped
                                 else f"no answer within {limit_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class Trackers:
    """The trackers of one run (none: every call does nothing). ``group``: the sweep folder of
    a job of a sweep, else None.

    Each tracker's part of a call runs through ``bounded``. A tracker that fails or does not
    answer in time is dropped with a one-line warning and the run goes on: its folder holds
    everything the tracker would have. At the start, a tracker with ``required: true`` that
    cannot be used refuses the run instead (TrackerError, before the first epoch)."""

    def __init__(self, names: list[str], logger_cfg: dict[str, Any] | None, group: Path | None = None):
        self.names, self.cfg, self.group = list(names), dict(logger_cfg or {}), group
        self._tb = None
        self._mlflow_run = None
        self._decisions_logged = 0
        self._params: dict[str, Any] = {}  # the config as section.key: value (start fills it in)
        self._stopping = lambda: False
        self._where: dict[str, str] = {}  # what each tracker writes to, for its messages

    def __bool__(self) -> bool:
        return bool(self.names)

    def _call(self, name: str, call, starting: bool = False) -> Any:
        """``call()`` for the tracker ``name`` if it is still in use (see the class docstring):
        its result, None where it is not in use or has just been dropped."""
        if name not in self.names:
            return None
        try:
            return bounded(call, CALL_LIMIT_S, self._stopping)
        except Exception as err:  # noqa: BLE001 - whatever a tracker raises, the run goes on
            why = _reason(err)
            self.names.remove(name)
            if name == "tensorboard":
                self._tb = None
            else:
                self._mlflow_run = None
            if self._stopping():  # the stop is what the user asked for: no advice about the tracker
                log.warning("warning: logger=%s (%s) given up: %s.", name, self._where.get(name, "?"), why)
                return None
            if starting and (self.cfg.get(name) or {}).get("required"):
                raise TrackerError(f"logger={name} ({self._where.get(name, '?')}) cannot be used: {why}. "
                                   f"{FIXES[name]}, or set logger.{name}.required=false to train without "
                                   f"it.") from None
            log.warning("warning: logger=%s (%s) %s: %s; the run goes on without it (its folder holds "
                        "every figure; logger.%s.required=true would refuse to start instead).",
                        name, self._where.get(name, "?"), "cannot be used" if starting else "stopped", why, name)

    def start(self, run_dir: Path, config: dict[str, Any], ids: dict[str, str], resumed_epoch: int | None,
              decisions_done: int = 0, stopping=lambda: False) -> None:
        """Open the tracker runs, or continue those in ``ids`` (the summary's ``trackers``: a
        resumed run, ``resumed_epoch`` epochs and ``decisions_done`` threshold decisions logged
        already); their ids go into ``ids``. ``stopping``: whether the run has been asked to stop (a
        tracker call pending then is given up on within STOP_GRACE_S). Only process 0 calls this."""
        self._decisions_logged = decisions_done
        self._params = params = flat(config)
        self._stopping = stopping
        self._where = {"tensorboard": str(run_dir / TENSORBOARD_DIR),
                       "mlflow": (self.cfg.get("mlflow") or {}).get("tracking_uri") or str(MLFLOW_STORE / "mlflow.db")}

        def tensorboard():
            from torch.utils.tensorboard import SummaryWriter

            _quiet_tensorboard_thread()
            # purge_step: events a stopped process wrote after the checkpoint are dropped.
            writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR),
                                   purge_step=resumed_epoch + 1 if resumed_epoch else None)
            if not resumed_epoch:
                writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()))
                writer.flush()  # a folder that cannot be written fails here, before the first epoch
            return writer

        def mlflow():
            new_run = ids.get("mlflow_run_id") is None
            run = _start_mlflow(self.cfg.get("mlflow") or {}, run_dir, self.group, ids.get("mlflow_run_id"))
            if new_run:  # a resumed run's were logged by its start (MLflow refuses them twice)
                _mlflow().log_params({k: _param(v) for k, v in params.items()}, run_id=run.info.run_id)
            return run, _mlflow().get_tracking_uri()

        # What a call given up on would set later stays out of the summary: set here, once done.
        self._tb = self._call("tensorboard", tensorboard, starting=True)
        if self._tb is not None:
            ids["tensorboard"] = TENSORBOARD_DIR
        started = self._call("mlflow", mlflow, starting=True)
        if started is not None:
            self._mlflow_run = started[0]
            ids["mlflow_run_id"], ids["mlflow_tracking_uri"] = started[0].info.run_id, started[1]

    def log_epoch(self, row: MetricsRow, decisions: list[dict[str, Any]]) -> None:
        """One metrics.csv row, and the threshold decisions made since the last call."""
        step = int(row.epoch)
        metrics = epoch_metrics(row)
        new = decisions[self._decisions_logged:]
        self._decisions_logged = len(decisions)
        for decision in new:
            value = decision.get("threshold")
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics["decision/threshold"] = float(value)
            if isinstance(decision.get("remaining_pct"), (int, float)):
                metrics["decision/remaining_pct"] = float(decision["remaining_pct"])

        def tensorboard() -> None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()

        self._call("tensorboard", tensorboard)
        self._call("mlflow", lambda: _mlflow().log_metrics(_mlflow_keys(metrics), step=step,
                                                           run_id=self._mlflow_run.info.run_id))

    def finish(self, run_dir: Path, summary: dict[str, Any], images: list[Path], report: Path | None) -> None:
        """The final summary, and the run's report (``report``, the markdown file) with its plots
        (``images``), which the run wrote into its folder."""
        if not self.names:
            return
        final = summary_metrics(summary)
        step = int(summary.get("epochs_completed") or 0)

        def tensorboard() -> None:
            for key, value in final.items():
                self._tb.add_scalar(key, value, step)
            for image in images:
                self._tb.add_image(f"report/{image.stem}", _read_png(image), step)
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self._params.items()}
            self._tb.add_hparams(hparams, {k: v for k, v in final.items() if "/remaining_pct/" not in k}, run_name=".")
            self._tb.flush()

        def mlflow() -> None:
            mlflow, run_id = _mlflow(), self._mlflow_run.info.run_id
            mlflow.log_metrics(_mlflow_keys(final), step=step, run_id=run_id)
            client = mlflow.tracking.MlflowClient()
            for path in [run_dir / "summary.json", run_dir / "metrics.csv", run_dir / "config.yaml", *images,
                         *([report] if report else [])]:
                if path.exists():
                    client.log_artifact(run_id, str(path))

        self._call("tensorboard", tensorboard)
        self._call("mlflow", mlflow)

    def close(self, status: str) -> None:
        """End the tracker runs: ``status`` is the summary's (completed, failed, interrupted)."""
        def tensorboard() -> None:
            self._tb.close()
            self._tb = None

        def mlflow() -> None:
            state = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            _mlflow().tracking.MlflowClient().set_terminated(self._mlflow_run.info.run_id, state)
            self._mlflow_run = None

        self._call("tensorboard", tensorboard)
        self._call("mlflow", mlflow)
        self.names = []


def _reason(err: Exception) -> str:
    """A failed tracker call in a few words: MLflow's messages run to several lines of URL and
    urllib3 detail."""
    text = str(err)
    if "NewConnectionError" in text or "Connection refused" in text:
        return "its server refuses connections"
    if "ReadTimeout" in text or "timed out" in text:
        return "its server did not answer in time"
    if isinstance(err, (TrackerError, TrackerTimeout)):
        return text.rstrip(".")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes its event file in a thread of its own; a write that fails there (a
    folder that cannot be written) would print that thread's traceback. It is raised again in
    the training thread by the next TensorBoard call, where it drops the tracker with one line,
    so the thread's own report is left out."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard", False):
        return

    def hook(args) -> None:
        if not isinstance(args.thread, _AsyncWriterThread):
            previous(args)

    hook.quiets_tensorboard = True
    threading.excepthook = hook


NO_TRACKERS = Trackers([], None)


def _mlflow():
    for key, value in REQUEST_LIMITS.items():
        os.environ.setdefault(key, value)  # MLflow reads them at each request
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
    if uri.startswith("sqlite:///"):
        _check_sqlite_store(Path(uri.removeprefix("sqlite:///")))
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


def _check_sqlite_store(path: Path) -> None:
    """Raises TrackerError unless the SQLite store ``path`` can be opened and written: MLflow
    retries a store it cannot open for about 100 s before it gives up (its
    create_sqlalchemy_engine_with_retry), where this takes no time."""
    import sqlite3

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_sqlite_writable(path, wait_s=5)
    except (OSError, sqlite3.Error) as err:
        raise TrackerError(f"its SQLite store {path} cannot be opened and written ({err})") from None


def _group_name(group: Path) -> str:
    """A sweep's experiment name: its folder, relative to the working folder where it is below it."""
    try:
        return f"sweep {group.absolute().relative_to(Path.cwd())}"
    except ValueError:
        return f"sweep {group.absolute()}"


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

