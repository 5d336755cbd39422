"""The lean training step's options keep results right: deferred metrics, fused optimizers, channels-last
memory and torch.compile. (How fast they are is measured by ``python benchmarks/train_speed.py``, not here.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CONF

from trainlab import checkpoint
from trainlab.predict import load_trained
from trainlab.tasks import DeferredMetrics, Task
from trainlab.trainer import evaluate


def test_deferred_metrics_equal_per_sample_values_with_an_uneven_last_batch():
    task = Task("multiclass", num_classes=10)
    deferred = DeferredMetrics(task, "train", every=3)
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(737, 10, generator=generator)
    targets = torch.randint(0, 10, (737,), generator=generator)
    for out, y in zip(outputs.split(100), targets.split(100), strict=True):  # the last batch has 37
        deferred.update(out, y, F.cross_entropy(out, y))
    values = deferred.compute()
    assert values["train/loss"].item() == pytest.approx(F.cross_entropy(outputs, targets).item(), rel=1e-5)
    accuracy = (outputs.argmax(-1) == targets).float().mean().item()
    assert values["train/acc"].item() == pytest.approx(accuracy, rel=1e-6)

    per_batch = task.metrics("train")
    for out, y in zip(outputs.split(100), targets.split(100), strict=True):
        task.update(per_batch, out, y, F.cross_entropy(out, y))
    for name, value in per_batch.compute().items():
        assert values[name].item() == pytest.approx(value.item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml")))
def test_every_optimizer_config_trains_on_the_cpu(train_run, name):
    _, metrics = train_run(f"optimizer={name}", "trainer.max_epochs=2", "trainer.device=cpu")
    assert metrics["test/acc"] >= 0.6  # 10 classes: chance is 0.1


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
