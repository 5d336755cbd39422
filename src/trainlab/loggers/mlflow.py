"""``logger=mlflow``: the run in MLflow (``pip install -e ".[mlflow]"``), by default in a SQLite database under
``outputs/`` (``outputs/mlflow.db``, the artifacts in ``outputs/mlartifacts/``), which
``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`` shows; ``logger.mlflow.tracking_uri`` names a
server (``http://...``) or another database (``postgresql://...``) instead.

Per run: its settings as parameters (``RunInfo.hparams``, the same as TensorBoard's HParams), the metrics of
the logged steps, of every epoch (with ``epoch``) and of the test, tags (``model``, ``dataset``, ``run_dir``;
a sweep's job also ``sweep`` and ``group``: its overrides without ``seed`` and ``cv.fold``, as
``sweeps/groups.py`` groups repeats), and as artifacts its config, its pictures and texts, ``metrics.json``
and the run dir's Markdown files; optionally the best checkpoint and its ONNX export. The jobs of a sweep are
runs of one experiment, named by the sweep dir.

A run is addressed by its id through an ``MlflowClient``, never through MLflow's global active run, which
would leak from one job of a sweep to the next in the same process. The id is kept in the run dir
(``mlflow.json``), so that a run that goes on in its own run dir (``ckpt_path=auto``) goes on in the same
MLflow run. MLflow cannot delete points: those a stopped attempt logged after its checkpoint stay, and the
run that goes on logs each metric only from the step after its last point on (the same values, where
training is deterministic; TensorBoard's logger purges and rewrites them instead).

``mlflow`` is imported when the logger is made, never with trainlab, which works without it installed.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import to_absolute_path

from trainlab import settings
from trainlab.checkpoint import RunCheckpoints
from trainlab.errors import ConfigError, TrainlabError
from trainlab.loggers import Logger, RunInfo, sweep_dir
from trainlab.outputs import METRICS_FILE
from trainlab.preemption import Interrupted

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

RECORD = "mlflow.json"  # in the run dir: the store and the id of its MLflow run
SINGLE_RUNS = "trainlab"  # the experiment of runs outside a sweep, unless logger.mlflow.experiment_name says
ARTIFACTS = "mlartifacts"  # beside a SQLite store: the artifacts of its runs
SQLITE = "sqlite:///"


class MLflowLogger(Logger):
    """Records the run in the MLflow store ``tracking_uri`` (settings: ``conf/logger/mlflow.yaml``)."""

    def __init__(self, tracking_uri: str, experiment_name: str | None, log_checkpoint: bool, log_onnx: bool):
        try:
            import mlflow  # noqa: F401  (here rather than at the top: an optional dependency)
        except ImportError:
            raise ConfigError(
                'logger=mlflow needs MLflow, an optional extra: pip install -e ".[mlflow]"'
            ) from None
        self.tracking_uri = store_uri(tracking_uri)
        self.experiment_name = experiment_name
        self.log_checkpoint, self.log_onnx = log_checkpoint, log_onnx

    def start(self, run: RunInfo) -> None:
        """Continue the MLflow run of the run dir, or start one; then its parameters and config."""
        from mlflow import MlflowClient

        self.client = MlflowClient(self.tracking_uri)
        self.run_dir = Path(run.run_dir)
        continued = self._continued_run()
        self.run_id = continued or self._new_run(run)
        (self.run_dir / RECORD).write_text(json.dumps({"tracking_uri": self.tracking_uri, "run_id": self.run_id}))
        self.logged_until = self._last_steps() if continued else {}  # metric -> its last step in the store
        self._log_params(run.hparams)
        self.client.log_text(self.run_id, run.config_yaml, "config.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        points = [
            Metric(key, float(value), timestamp, step)
            for key, value in metrics.items()
            if step > self.logged_until.get(key, -1)
        ]
        if points:
            self.client.log_batch(self.run_id, metrics=points, synchronous=True)

    def log_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        self.log_metrics({**metrics, "epoch": epoch}, step)

    log_test = log_metrics

    def log_image(self, tag: str, image: Image.Image, step: int) -> None:
        self.client.log_image(self.run_id, image, artifact_file=f"{tag}.png")

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{tag}.md")

    def finish(self, results: dict[str, Any] | None) -> None:
        """The run's files as artifacts, then its status: finished; killed where a signal stopped it (it may
        go on), failed where an error did (``finish`` runs as the trainer's error is raised)."""
        if results is not None:
            for path in sorted([self.run_dir / METRICS_FILE, *self.run_dir.glob("*.md")]):
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
            best = RunCheckpoints(self.run_dir).best
            if self.log_checkpoint and best.is_file():
                self.client.log_artifact(self.run_id, str(best), "checkpoints")
            if self.log_onnx and best.is_file():
                self._log_onnx(best)
        error = sys.exc_info()[1]
        stopped = isinstance(error, Interrupted | KeyboardInterrupt)
        status = "FINISHED" if results is not None else "KILLED" if stopped else "FAILED"
        self.client.set_terminated(self.run_id, status)

    # -- the pieces -------------------------------------------------------------------------------------
    def _continued_run(self) -> str | None:
        """The id of the MLflow run that this run dir recorded, if it is in this store and not deleted;
        set running again."""
        from mlflow.exceptions import MlflowException

        record = self.run_dir / RECORD
        saved = json.loads(record.read_text()) if record.is_file() else {}
        if saved.get("tracking_uri") != self.tracking_uri:
            return None
        try:
            found = self.client.get_run(saved["run_id"])
        except MlflowException:
            return None
        if found.info.lifecycle_stage != "active":
            return None
        self.client.update_run(found.info.run_id, status="RUNNING")
        log.info("MLflow: continuing run %s of %s", found.info.run_id, self.tracking_uri)
        return found.info.run_id

    def _new_run(self, run: RunInfo) -> str:
        """A new MLflow run, named by the run dir (as in TensorBoard), in the sweep's experiment or the
        single runs' one."""
        sweep = sweep_dir(self.run_dir)
        tags = {key: str(run.hparams[key]) for key in ("model", "dataset") if key in run.hparams}
        tags["run_dir"] = str(self.run_dir.resolve())
        if sweep is not None:
            tags["sweep"] = shown(sweep)
            tags["group"] = " ".join(group_of_this_job())
        name = self.experiment_name or (shown(sweep) if sweep is not None else SINGLE_RUNS)
        created = self.client.create_run(self._experiment(name), run_name=self.run_dir.name, tags=tags)
        log.info("MLflow: run %s in experiment %r of %s", created.info.run_id, name, self.tracking_uri)
        return created.info.run_id

    def _experiment(self, name: str) -> str:
        """The id of the experiment ``name``, created where missing (artifacts beside a SQLite store)."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location(self.tracking_uri))
            except MlflowException:  # a parallel job created it first
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        return found.experiment_id

    def _last_steps(self) -> dict[str, int]:
        """For every metric of the continued run, the last step it has a point at."""
        metrics = self.client.get_run(self.run_id).data.metrics
        return {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in metrics}

    def _log_params(self, hparams: dict[str, Any]) -> None:
        """The settings as parameters, which MLflow never changes: a continued run logs the new ones, and those
        it changes (``trainer.max_epochs``...) as tags ``resumed_with.<name>``."""
        from mlflow.entities import Param, RunTag
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        logged = self.client.get_run(self.run_id).data.params
        values = {key: str(value)[:MAX_PARAM_VAL_LENGTH] for key, value in hparams.items()}
        params = [Param(key, value) for key, value in values.items() if key not in logged]
        for start in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + MAX_PARAMS_TAGS_PER_BATCH])
        changed = [
            RunTag(f"resumed_with.{key}", value)
            for key, value in values.items()
            if logged.get(key, value) != value
        ]
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def _log_onnx(self, best: Path) -> None:
        """``best.ckpt`` exported as export.py does (conf/export.yaml, ONNX Runtime's check included), as the
        artifact ``onnx/best.onnx``. A model that does not export is a warning: the run itself is fine."""
        from hydra import compose
        from hydra.core.global_hydra import GlobalHydra

        from trainlab.export import export

        if not GlobalHydra.instance().is_initialized():
            log.warning("logger.mlflow.log_onnx: no ONNX export outside train.py, which has conf/export.yaml")
            return
        with tempfile.TemporaryDirectory() as folder:
            cfg = compose("export")
            cfg.ckpt, cfg.output = str(best), str(Path(folder) / f"{best.stem}.onnx")
            try:
                export(cfg)
            except TrainlabError as error:
                log.warning("logger.mlflow.log_onnx: no ONNX export: %s", error)
                return
            self.client.log_artifact(self.run_id, cfg.output, "onnx")


def store_uri(uri: str) -> str:
    """``uri`` with a relative SQLite path made absolute (from where the command started, as Hydra's
    ``to_absolute_path``) and its folder made, so that every run started there finds the same database."""
    if not uri.startswith(SQLITE):
        return uri
    path = Path(to_absolute_path(uri.removeprefix(SQLITE)))
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{SQLITE}{path}"


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its runs' artifacts: ``mlartifacts/`` beside a SQLite store; a server's
    own place otherwise (None)."""
    if not tracking_uri.startswith(SQLITE):
        return None
    return (Path(tracking_uri.removeprefix(SQLITE)).parent / ARTIFACTS).as_uri()


def shown(folder: Path) -> str:
    """A folder as the user knows it: relative to where the command started, if it is under it."""
    start = Path(to_absolute_path(".")).resolve()
    return str(folder.relative_to(start)) if folder.is_relative_to(start) else str(folder)


def group_of_this_job() -> list[str]:
    """This sweep job's group: its overrides without ``seed`` and ``cv.fold`` (``sweeps.groups``), nor the
    run-only settings and paths (``settings.NOT_HPARAMS``), which are the same for every job."""
    from hydra.core.hydra_config import HydraConfig

    from trainlab.sweeps.groups import group_overrides, override_key

    if not HydraConfig.initialized():
        return []
    overrides = group_overrides(list(HydraConfig.get().overrides.task))
    return [o for o in overrides if not settings.among(override_key(o), settings.NOT_HPARAMS)]
