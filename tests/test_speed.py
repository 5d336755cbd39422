"""The lean training step's options keep results right: deferred metrics, fused optimizers, channels-last
memory and torch.compile. (How fast they are is measured by ``python benchmarks/train_speed.py``, not here.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CONF, make_config
from hydra.utils import instantiate

from trainlab import checkpoint
from trainlab.callbacks import Callback
from trainlab.predict import load_trained
from trainlab.run import build
from trainlab.tasks import DeferredMetrics, Task
from trainlab.trainer import evaluate


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_deferred_metrics_equal_per_batch_values_with_an_uneven_last_batch(smoothing):
    """Outputs added in groups (here of 3 batches: ``max_pending`` values) give the metrics of per-batch
    updates with each batch's training loss, label smoothing included."""
    task = Task("multiclass", num_classes=10)
    deferred = DeferredMetrics(task, "train", smoothing, max_pending=3 * 100 * 10)
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(737, 10, generator=generator)
    targets = torch.randint(0, 10, (737,), generator=generator)
    for out, y in zip(outputs.split(100), targets.split(100), strict=True):  # the last batch has 37
        deferred.update(out, y)
    values = deferred.compute()
    expected = F.cross_entropy(outputs, targets, label_smoothing=smoothing).item()
    assert values["train/loss"].item() == pytest.approx(expected, rel=1e-5)
    accuracy = (outputs.argmax(-1) == targets).float().mean().item()
    assert values["train/acc"].item() == pytest.approx(accuracy, rel=1e-6)

    per_batch = task.metrics("train")
    for out, y in zip(outputs.split(100), targets.split(100), strict=True):
        task.update(per_batch, out, y, task.loss(out, y, smoothing))
    for name, value in per_batch.compute().items():
        assert values[name].item() == pytest.approx(value.item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml")))
def test_every_optimizer_config_trains_on_the_cpu(train_run, name):
    _, metrics = train_run(f"optimizer={name}", "trainer.max_epochs=2", "trainer.device=cpu")
    assert metrics["test/acc"] >= 0.6  # 10 classes: chance is 0.1


class Layout(Callback):
    """Whether the weights of the model's convolutions with more than one input channel are channels-last
    (with one channel, both orders are the same in memory)."""

    def on_fit_start(self, context) -> None:
        kernels = [p for p in context.model.parameters() if p.dim() == 4 and p.shape[1] > 1]
        self.channels_last = [k.is_contiguous(memory_format=torch.channels_last) for k in kernels]


@pytest.mark.parametrize(
    ("overrides", "expected"), [(["model=cnn"], True), (["model=cnn", "trainer.channels_last=false"], False)]
)
def test_channels_last_is_the_default_for_convolutional_models_on_the_cpu(tmp_path, overrides, expected):
    cfg = make_config(*overrides, "trainer.max_epochs=1", "trainer.limit_batches=1", "trainer.device=cpu")
    run = build(cfg)
    run.trainer.callbacks["layout"] = layout = Layout()
    run.fit(cfg, tmp_path)
    assert layout.channels_last and layout.channels_last == [expected] * len(layout.channels_last)


def test_a_channels_last_step_equals_the_contiguous_one_up_to_float_rounding():
    """Same weights and batch: the outputs and every gradient agree to 1e-5 of their largest value."""
    cfg = make_config("model=cnn")
    x, y = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 10
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(0)
        model = (
            instantiate(cfg.model, input_shape=[3, 32, 32], num_outputs=10).eval().to(memory_format=memory_format)
        )
        outputs = model(x.contiguous(memory_format=memory_format))
        F.cross_entropy(outputs, y).backward()
        results.append([outputs.detach(), *(p.grad for p in model.parameters())])
    for contiguous, channels_last in zip(*results, strict=True):
        scale = contiguous.abs().max().item()
        assert torch.allclose(channels_last, contiguous, rtol=0, atol=1e-5 * scale)


def test_channels_last_gives_the_same_model_as_the_default_layout(train_run):
    runs = [
        train_run("model=cnn", "trainer.max_epochs=1", "trainer.device=cpu", f"trainer.channels_last={flag}")
        for flag in ("false", "true")
    ]
    (_, default), (_, channels_last) = runs
    assert default["test/acc"] >= 0.5  # one epoch; chance is 0.1
    assert channels_last["test/acc"] == pytest.approx(default["test/acc"], abs=0.02)


@pytest.mark.slow
def test_compiled_model_saves_plain_keys_and_reloads_to_the_same_results(train_run):
    run_dir, metrics = train_run("trainer.compile=true", "trainer.max_epochs=1", "trainer.device=cpu")
    state = checkpoint.load(run_dir / "checkpoints" / "best.ckpt")
    assert not any("_orig_mod" in key for key in state["model"])
    _, data, model = load_trained(run_dir / "checkpoints" / "best.ckpt", torch.device("cpu"))
    reloaded = evaluate(model, data.batches("test"), data.task, "test", torch.device("cpu"))
    assert reloaded["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
