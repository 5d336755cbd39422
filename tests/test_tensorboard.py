"""TensorBoard events, read back with TensorBoard's own reader and plugins: a run's scalars, HParams session
and experiment, Custom Scalars layout; a sweep's experiment, as the HParams dashboard gets it."""

import re
from pathlib import Path

import pytest
from conftest import cli
from omegaconf import OmegaConf
from tensorboard import context
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalars_metadata
from tensorboard.plugins.hparams import api_pb2, backend_context
from tensorboard.plugins.hparams import metadata as hparams_metadata

from trainlab.outputs import MAIN_SETTINGS
from trainlab.sweeps.tensorboard import swept_settings

TAGS = {
    "train/loss_step",
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/f1",
    "test/acc",
    "test/loss",
    "lr",
}


@pytest.fixture(scope="module")
def events(digits_run) -> EventAccumulator:
    run_dir, _ = digits_run
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    return accumulator.Reload()


def test_scalars_are_logged_under_their_tags(events, digits_run):
    _, metrics = digits_run
    assert set(events.Tags()["scalars"]) >= TAGS
    assert "epoch" not in events.Tags()["scalars"]  # the step axis says it

    epochs = metrics["epochs"]
    for tag in ("train/loss", "val/loss", "val/acc"):
        assert len(events.Scalars(tag)) == epochs  # one point per epoch
    val_acc = events.Scalars("val/acc")
    assert val_acc[metrics["best_epoch"] - 1].value == pytest.approx(metrics["val/acc"])  # float32 in the file
    assert [e.value for e in events.Scalars("test/acc")] == [pytest.approx(metrics["test/acc"])]
    steps = [e.step for e in events.Scalars("train/loss_step")]
    assert steps == sorted(steps) and steps[-1] == metrics["global_step"]
    assert [e.step for e in events.Scalars("lr")] == steps
    per_epoch = metrics["global_step"] // epochs
    assert set(range(per_epoch, metrics["global_step"] + 1, per_epoch)) <= set(steps)  # every epoch's last step


def test_a_single_run_declares_its_main_settings_and_the_metrics_monitor_first(events, digits_run):
    _, metrics = digits_run
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    assert [info.name for info in experiment.hparam_infos] == list(MAIN_SETTINGS)
    metric_tags = [info.name.tag for info in experiment.metric_infos]
    assert metric_tags[0] == metrics["monitor"] == "val/loss"
    assert set(metric_tags) == {"val/loss", "val/acc", "val/f1", "test/loss", "test/acc", "test/f1"}

    session = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    hparams = session.hparams
    assert hparams["model"].string_value == "MLP"
    assert not [key for key in hparams if key.endswith(("_target_", "_partial_")) or key.startswith("paths.")]
    assert hparams["optimizer.lr"].number_value == pytest.approx(1e-3)
    assert hparams["seed"].number_value == 42
    end = hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS


def layout_charts(events: EventAccumulator) -> dict[str, list[str]]:
    """Each Custom Scalars chart's title and the run's scalar tags it draws, matched as the plugin matches
    them (its tags are regular expressions, ``re.match``)."""
    [event] = events.Tensors(custom_scalars_metadata.CONFIG_SUMMARY_TAG)  # the plugin reads its layout here
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    return {
        chart.title: [
            tag for pattern in chart.multiline.tag for tag in events.Tags()["scalars"] if re.match(pattern, tag)
        ]
        for category in layout.category
        for chart in category.chart
    }


def test_custom_scalars_put_train_and_val_in_one_chart(events):
    charts = layout_charts(events)
    assert charts == {
        "loss": ["train/loss", "val/loss"],  # not train/loss_step
        "acc": ["train/acc", "val/acc"],
        "f1": ["train/f1", "val/f1"],
        "lr": ["lr"],
    }


# -- a sweep ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """The sweep of the TensorBoard issue's acceptance, through the real command line."""
    sweep_dir = tmp_path_factory.mktemp("tensorboard") / "sweep"
    overrides = ("optimizer.lr=0.001,0.01", "seed=0,1,2", "trainer.max_epochs=2", "trainer.progress=false")
    done = cli("train.py", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}")
    assert done.returncode == 0, done.stderr
    return sweep_dir


def test_a_sweep_declares_one_experiment_of_its_swept_settings_first(sweep_dir):
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep_dir))
    runs.Reload()
    content = runs.PluginRunToTagToContent(hparams_metadata.PLUGIN_NAME)
    declaring = [run for run, tags in content.items() if hparams_metadata.EXPERIMENT_TAG in tags]
    assert declaring == ["tensorboard"]  # the sweep's, the only one: the jobs' sessions only
    assert sum(hparams_metadata.SESSION_START_INFO_TAG in tags for tags in content.values()) == 6

    experiment = hparams_metadata.parse_experiment_plugin_data(
        content["tensorboard"][hparams_metadata.EXPERIMENT_TAG]
    )
    names = [info.name for info in experiment.hparam_infos]
    assert names[:2] == ["optimizer.lr", "seed"]
    assert not [name for name in names if name.endswith("_target_")]
    assert [info.name.tag for info in experiment.metric_infos][:2] == ["val/loss", "test/acc"]  # the monitor first

    # What the HParams dashboard is sent: TensorBoard's hparams backend sorts, the swept settings stay first.
    hparams = backend_context.Context(base_plugin.TBContext(data_provider=MultiplexerDataProvider(runs, "")))
    request = context.RequestContext()
    shown = hparams.experiment_from_metadata(
        request,
        "",
        True,
        hparams.hparams_metadata(request, ""),
        hparams.hparams_from_data_provider(request, "", 0),
    )
    assert [info.name for info in shown.hparam_infos][:2] == ["optimizer.lr", "seed"]
    assert {info.name for info in shown.hparam_infos} == {"optimizer.lr", "seed", *MAIN_SETTINGS}


def test_every_job_of_a_sweep_charts_train_against_val(sweep_dir):
    for run_dir in sorted(sweep_dir.glob("*/metrics.json")):
        events = EventAccumulator(str(run_dir.parent / "tensorboard"), size_guidance={"tensors": 0}).Reload()
        assert layout_charts(events)["loss"] == ["train/loss", "val/loss"]


def test_the_swept_settings_come_from_the_command_line_then_the_search_space():
    sweep_config = OmegaConf.create(
        {
            "hydra": {
                "overrides": {"task": ["model=mlp,cnn", "trainer.max_epochs=2", "seed=range(3)"]},
                "sweeper": {"params": {"optimizer.lr": "tag(log, interval(1e-4, 3e-2))", "seed": "1,2"}},
            }
        }
    )
    assert swept_settings(sweep_config) == ["model", "seed", "optimizer.lr"]
