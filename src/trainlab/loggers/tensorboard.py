"""``logger=tensorboard`` (the default): TensorBoard events in ``<run dir>/tensorboard/``.

Scalars per logged step and per epoch, pictures, texts, precision-recall curves, the Custom Scalars layout
(train against val per metric) and the HParams dashboard's records. The dashboard reads two kinds: a
*session* per run (its settings; its metrics are the run's own scalars) and one *experiment* per logdir
(which settings and metrics the table, parallel coordinates and scatter plots show; the hparams plugin takes
the first one it finds). A single run writes both when it finishes; a run of a sweep writes only its session,
and the sweep writes the experiment (``trainlab.sweeps.tensorboard``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2, summary_v2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from trainlab.loggers import Logger, RunInfo, sweep_dir
from trainlab.outputs import MAIN_SETTINGS

if TYPE_CHECKING:
    import torch
    from PIL import Image

FOLDER = "tensorboard"


class TensorBoardLogger(Logger):
    """A ``SummaryWriter`` on ``<run dir>/tensorboard``. A run that goes on in its own run dir
    (``ckpt_path=auto``) purges the events that the stopped attempt logged after the step it saved, so its
    curves go on without a fold or a duplicate point."""

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        folder = Path(run.run_dir) / FOLDER
        purge_step = run.resumed_step + 1 if folder.is_dir() else None  # what the checkpoint holds stays
        self.writer = SummaryWriter(folder, purge_step=purge_step)
        self.writer.add_custom_scalars(custom_scalars_layout(run.metric_names))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        self.log_metrics(metrics, step)  # the step axis says when; no "epoch" scalar

    log_test = log_metrics

    def log_image(self, tag: str, image: Image.Image, step: int) -> None:
        from torchvision.transforms.functional import pil_to_tensor

        self.writer.add_image(tag, pil_to_tensor(image.convert("RGB")), step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def log_pr_curve(self, tag: str, labels: torch.Tensor, probabilities: torch.Tensor, step: int) -> None:
        self.writer.add_pr_curve(tag, labels, probabilities, step)

    def finish(self, results: dict[str, Any] | None) -> None:
        """The run's HParams session (and, for a single run, the experiment), then close the events file."""
        if results is not None:
            hparams, run_dir = self.run.hparams, Path(self.run.run_dir)
            summaries = [session_start_summary(hparams, run_dir.name), session_end_summary()]
            if sweep_dir(run_dir) is None:
                summaries.append(experiment_summary(hparams, results))
            for summary in summaries:
                self.writer.file_writer.add_summary(summary)
        self.writer.close()


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
