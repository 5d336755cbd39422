"""A run's TensorBoard events, read back with TensorBoard's own reader: the scalars and the HParams data."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

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


def test_hparams_dashboard_has_the_settings_and_final_metrics(events):
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content[hparams_metadata.EXPERIMENT_TAG])
    session = plugin_data_pb2.HParamsPluginData.FromString(content[hparams_metadata.SESSION_START_INFO_TAG])

    metric_tags = {info.name.tag for info in experiment.experiment.metric_infos}
    assert {"test/acc", "test/loss", "val/acc"} <= metric_tags
    hparams = session.session_start_info.hparams
    assert hparams["model"].string_value == "MLP"
    assert not [key for key in hparams if key.endswith(("_target_", "_partial_")) or key.startswith("paths.")]
    assert hparams["optimizer.lr"].number_value == pytest.approx(1e-3)
    assert hparams["seed"].number_value == 42


def test_custom_scalars_put_train_and_val_in_one_chart(events):
    from tensorboard.plugins.custom_scalar import layout_pb2

    assert "custom_scalars__config__" in events.PluginTagToContent("custom_scalars")
    [event] = events.Tensors("custom_scalars__config__")  # the plugin reads its layout from this tensor
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    assert charts["loss"] == ["train/loss", "val/loss"]
    assert charts["acc"] == ["train/acc", "val/acc"]
    assert charts["lr"] == ["lr"]
