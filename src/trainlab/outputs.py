"""What a run writes besides its checkpoints: TensorBoard events (``tensorboard/``) and ``metrics.json``.
Only rank 0 writes; on the other ranks of a DDP run every call does nothing.

TensorBoard's HParams dashboard reads two kinds of records: a *session* per run (its settings; its metrics
are the run's own scalars) and one *experiment* per logdir (which settings and metrics the table, parallel
coordinates and scatter plots show; the hparams plugin takes the first one it finds). A single run writes
both; a run of a sweep writes only its session, and the sweep writes the experiment
(``trainlab.sweeps.tensorboard``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary_v2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from trainlab import distributed


class _NoWriter:
    """Stands in for TensorBoard's writer on ranks other than 0."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class RunOutputs:
    """The run dir's TensorBoard writer (``writer``, for callbacks' pictures too) and its results file.

    Args:
        run_dir: the run's folder.
        purge_step: a resumed run's global step: TensorBoard drops events logged after it by the first run.
    """

    def __init__(self, run_dir: Path, purge_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.writer = (
            SummaryWriter(self.run_dir / "tensorboard", purge_step=purge_step or None)
            if distributed.is_main()
            else _NoWriter()
        )

    def write_layout(self, metric_names: list[str]) -> None:
        """The Custom Scalars charts for a task with these metrics (``acc``, ``f1``; ``mse``...)."""
        self.writer.add_custom_scalars(custom_scalars_layout(metric_names))

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def write_results(self, results: dict[str, Any], hparams: dict[str, Any]) -> None:
        """``metrics.json``, and the run's session for TensorBoard's HParams dashboard (``hparams``: its
        settings, ``flat_hparams``); a single run also declares the experiment, of its main settings."""
        if not distributed.is_main():
            return
        summaries = [session_start_summary(hparams, self.run_dir.name), session_end_summary()]
        if not in_sweep(self.run_dir):
            summaries.append(experiment_summary(hparams, results))
        for summary in summaries:
            self.writer.file_writer.add_summary(summary)
        (self.run_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")

    def close(self) -> None:
        self.writer.close()


# Settings shown first in TensorBoard's HParams table: what a reader compares runs by.
MAIN_SETTINGS = (
    "model",
    "dataset",
    "optimizer",
    "optimizer.lr",
    "scheduler",
    "dataset.batch_size",
    "trainer.max_epochs",
    "seed",
    "cv",
)
# Settings that cannot matter to a comparison of results (where things run, how they are shown, file paths).
IGNORED_SETTINGS = (
    "paths.",
    "hydra.",
    "ckpt_path",
    "debug_errors",
    "trainer.device",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.log_every_n_steps",
    "trainer.strategy",
    "dataset.path",
    "dataset.root",
    "dataset.download",
    "dataset.num_workers",
    "dataset.pin_memory",
    "dataset.persistent_workers",
    "callbacks.pictures",
    "model.weights",
)


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as flat ``group.key: value`` pairs for TensorBoard's HParams dashboard: the main
    settings first, then the rest in name order. A group's class path (``model._target_``) becomes the
    group's value by class name (``model: MLP``; ``scheduler: none`` without one), and the settings of
    ``IGNORED_SETTINGS`` are left out."""
    flat: dict[str, Any] = {"scheduler": "none", "augment": "none", "cv": "none"}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and prefix and "." not in prefix:
                    flat[prefix] = str(value).rsplit(".", 1)[-1]
                elif not str(key).startswith("_"):
                    visit(value, f"{prefix}.{key}" if prefix else str(key))
        elif not prefix.startswith(IGNORED_SETTINGS):
            flat[prefix] = node if isinstance(node, bool | int | float | str) else str(node)

    visit(OmegaConf.to_container(cfg, resolve=True), "")
    main = [key for key in MAIN_SETTINGS if key in flat]
    return {key: flat[key] for key in [*main, *sorted(set(flat) - set(main))]}


def in_sweep(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a job's run dir in a Hydra sweep dir (one holding Hydra's ``multirun.yaml``)."""
    return any((folder / "multirun.yaml").is_file() for folder in Path(run_dir).resolve().parents)


def session_start_summary(hparams: dict[str, Any], run_name: str) -> Summary:
    """A run's settings: a row of the HParams table, named by the run (not grouped with other runs)."""
    return summary_v2.hparams_pb(hparams, trial_id=run_name)


def session_end_summary() -> Summary:
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return hparams_plugin_summary(hparams_metadata.SESSION_END_INFO_TAG, session_end_info=end)


def experiment_summary(hparams: dict[str, Any], results: dict[str, Any], swept: Sequence[str] = ()) -> Summary:
    """What TensorBoard's HParams dashboard shows, from one run's settings (``flat_hparams``) and results
    (its ``metrics.json``). Settings: ``swept`` (those a sweep varies) then the main settings. TensorBoard
    lists those it is told differ first, the rest by name, and shows the first five. Metrics: the monitor,
    then the test and val metrics."""
    names = [name for name in dict.fromkeys([*swept, *MAIN_SETTINGS]) if name in hparams]
    hparam_infos = [
        api_pb2.HParamInfo(name=name, type=data_type(hparams[name]), differs=name in swept) for name in names
    ]
    monitor = results["monitor"]
    tags = [monitor, *sorted(k for k in results if k.startswith(("test/", "val/")) and k != monitor)]
    metric_infos = [summary_v2.Metric(tag).as_proto() for tag in tags]
    experiment = api_pb2.Experiment(
        hparam_infos=hparam_infos, metric_infos=metric_infos, time_created_secs=time.time()
    )
    return hparams_plugin_summary(hparams_metadata.EXPERIMENT_TAG, experiment=experiment)


def data_type(value: Any) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    return api_pb2.DATA_TYPE_FLOAT64 if isinstance(value, int | float) else api_pb2.DATA_TYPE_STRING


def hparams_plugin_summary(tag: str, **plugin_data: Any) -> Summary:
    """A record of the hparams plugin (as ``summary_v2`` makes them): ``plugin_data`` is one field of its
    ``HParamsPluginData`` (``experiment=``, ``session_end_info=``)."""
    summary_metadata = hparams_metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(**plugin_data))
    return Summary(value=[Summary.Value(tag=tag, metadata=summary_metadata, tensor=hparams_metadata.NULL_TENSOR)])


def custom_scalars_layout(metric_names: list[str]) -> dict[str, dict[str, list]]:
    """TensorBoard's Custom Scalars page: train against val in one chart per metric, and the lr. A chart's
    tags are regular expressions matched at the tag's start, hence the ``$`` (else ``train/loss`` would draw
    ``train/loss_step`` too)."""
    charts = {name: ["Multiline", [f"train/{name}$", f"val/{name}$"]] for name in ["loss", *sorted(metric_names)]}
    return {"train vs val": charts | {"lr": ["Multiline", ["lr$"]]}}
