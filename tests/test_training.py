"""Short training runs: every task kind and model learns, checkpoints hold what they promise and reload to
identical outputs, and every scheduler draws its learning-rate curve in TensorBoard."""

import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_config
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainlab.predict import load_trained
from trainlab.run import build, build_data_and_model


def scalars(run_dir, tag: str) -> list[float]:
    """The values of ``tag`` in the run's TensorBoard events, read by TensorBoard's own reader."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [event.value for event in events.Scalars(tag)]


def test_default_run_reaches_95_percent(digits_run):
    """The multiclass task: ``python train.py`` (mlp on digits, 10 epochs)."""
    _, metrics = digits_run
    assert metrics["test/acc"] >= 0.95
    assert metrics["epochs"] == 10 and 1 <= metrics["best_epoch"] <= 10


def test_binary_task_learns(train_run):
    _, metrics = train_run("dataset=breast_cancer", "trainer.max_epochs=5")
    assert metrics["test/acc"] >= 0.9  # the majority class is 0.63
    assert metrics["test/f1"] >= 0.9


def test_regression_task_learns_in_the_data_units(train_run):
    """The model learns standardised targets, but MSE and R2 are those of the predictions in units."""
    overrides = ("dataset=diabetes", "trainer.max_epochs=5")
    _, metrics = train_run(*overrides)
    assert metrics["test/r2"] >= 0.3  # predicting the mean gives 0
    data, _ = build_data_and_model(make_config(*overrides))
    variance = data.y_test.var(correction=0).item()
    assert metrics["test/r2"] == pytest.approx(1 - metrics["test/mse"] / variance, abs=1e-4)


@pytest.mark.parametrize("model", ["linear", "mlp", "cnn", "resnet"])
def test_each_model_trains(train_run, model):
    """Two short epochs on the 8x8 digits: the training loss of the second is below that of the first."""
    run_dir, metrics = train_run(
        f"model={model}",
        "dataset.batch_size=32",
        "dataset.val_fraction=0.05",
        "dataset.test_fraction=0.05",
        "trainer.max_epochs=2",
        "trainer.limit_batches=5",
    )
    assert (metrics["epochs"], metrics["global_step"]) == (2, 10)
    first, second = scalars(run_dir, "train/loss")
    assert math.isfinite(metrics["test/loss"]) and second < first


def test_linear_model_recovers_weight_and_bias(train_run):
    """``dataset=linear model=linear optimizer=sgd``: y = 2x + 1 + noise gives weight ~2 and bias ~1."""
    run_dir, _ = train_run("dataset=linear", "model=linear", "optimizer=sgd")
    state = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)["model"]
    (weight,), bias = state["1.weight"].flatten().tolist(), state["1.bias"].item()
    assert weight == pytest.approx(2.0, abs=0.1) and bias == pytest.approx(1.0, abs=0.1)


def test_checkpoints_hold_the_state_and_the_resolved_config(digits_run):
    run_dir, metrics = digits_run
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "global_step",
        "best_score",
        "rng",
        "input_spec",
        "config",
    ):
        assert key in best and key in last
    assert best["epoch"] == metrics["best_epoch"] and last["epoch"] == metrics["epochs"]
    assert last["global_step"] == metrics["global_step"]
    assert best["best_score"] == metrics["best_score"] == metrics[metrics["monitor"]]
    assert best["optimizer"]["state"], "the optimizer's moments are saved"

    config = yaml.safe_load(best["config"])  # plain YAML, every interpolation resolved
    assert "${" not in best["config"]
    expected = OmegaConf.to_container(OmegaConf.create(best["config"]), resolve=True)
    assert config == expected
    assert config["model"]["_target_"] == "trainlab.model.MLP" and config["dataset"]["seed"] == config["seed"]
    assert not list((run_dir / "checkpoints").glob("*.tmp")), "no temporary file left behind"


def test_reloaded_checkpoint_gives_bitwise_identical_outputs(tmp_path):
    """The model in memory at the end of training (best weights) and the one rebuilt from best.ckpt by
    predict compute exactly the same outputs from exactly the same preprocessed inputs."""
    cfg = make_config("trainer.max_epochs=3", "trainer.limit_batches=5", "scheduler=step")
    run = build(cfg)
    run.fit(cfg, tmp_path)
    _, data, model = load_trained(tmp_path / "checkpoints" / "best.ckpt", torch.device("cpu"))
    assert torch.equal(data.x_test, run.data.x_test)
    run.model.eval()
    with torch.no_grad():
        assert torch.equal(model(data.x_test), run.model(run.data.x_test))


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])
def test_label_smoothing_caps_confidence_while_evaluation_reports_the_plain_loss(train_run, dataset):
    """Trained on half-smoothed targets the model stays unsure (its top probability stays below 0.9;
    without smoothing these runs pass 0.9999), yet test/loss is the plain loss of the best checkpoint."""
    run_dir, metrics = train_run(f"dataset={dataset}", "trainer.max_epochs=10", "trainer.label_smoothing=0.5")
    _, data, model = load_trained(run_dir / "checkpoints" / "best.ckpt", torch.device("cpu"))
    with torch.no_grad():
        outputs = model(data.x_test)
    assert data.task.probabilities(outputs).max() < 0.9
    assert metrics["test/acc"] >= 0.9
    assert metrics["test/loss"] == pytest.approx(data.task.loss(outputs, data.y_test).item(), rel=1e-5)


# -- learning-rate schedules ---------------------------------------------------------------------------
EPOCHS, STEPS = 3, 5  # 3 epochs of 5 optimizer steps; lr is logged after every step


def lr_curve(train_run, scheduler: str, *overrides: str) -> tuple[list[float], DictConfig, Path]:
    """The lr each optimizer step trained with, as TensorBoard holds it; the run's config and folder."""
    settings = [f"scheduler={scheduler}", f"trainer.max_epochs={EPOCHS}", f"trainer.limit_batches={STEPS}"]
    settings += ["trainer.log_every_n_steps=1", *overrides]
    run_dir, _ = train_run(*settings)
    curve = scalars(run_dir, "lr")
    assert len(curve) == EPOCHS * STEPS
    return curve, make_config(*settings), run_dir


def per_epoch(curve: list[float]) -> list[float]:
    """One value per epoch, checking that an epoch-wise schedule holds the lr constant within an epoch."""
    epochs = [curve[i : i + STEPS] for i in range(0, len(curve), STEPS)]
    for values in epochs:
        assert values == pytest.approx([values[0]] * STEPS)
    return [values[0] for values in epochs]


def test_no_scheduler_keeps_the_lr(train_run):
    curve, cfg, _ = lr_curve(train_run, "none")
    assert curve == pytest.approx([cfg.optimizer.lr] * EPOCHS * STEPS)


@pytest.mark.parametrize("scheduler", ["step", "exponential"])
def test_step_and_exponential_multiply_by_gamma_every_epoch(train_run, scheduler):
    curve, cfg, _ = lr_curve(train_run, scheduler)
    lr, gamma = cfg.optimizer.lr, cfg.scheduler.gamma
    assert per_epoch(curve) == pytest.approx([lr, lr * gamma, lr * gamma**2])


def test_multistep_drops_at_its_milestones(train_run):
    curve, cfg, _ = lr_curve(train_run, "multistep", "scheduler.milestones=[2]")
    lr = cfg.optimizer.lr
    assert per_epoch(curve) == pytest.approx([lr, lr, lr * cfg.scheduler.gamma])


def test_cosine_decreases_to_zero_over_the_run(train_run):
    curve, cfg, run_dir = lr_curve(train_run, "cosine")
    lr = cfg.optimizer.lr
    assert per_epoch(curve) == pytest.approx([lr, lr * 0.75, lr * 0.25])  # (1 + cos(pi * epoch / 3)) / 2
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["scheduler"]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)  # after the last epoch


@pytest.mark.parametrize("scheduler", ["onecycle", "warmup_cosine"])
def test_per_step_schedules_rise_then_fall(train_run, scheduler):
    curve, cfg, _ = lr_curve(train_run, scheduler)
    peak = curve.index(max(curve))
    assert 0 < peak < len(curve) // 2
    assert max(curve) == pytest.approx(cfg.optimizer.lr, rel=0.05)
    assert all(a < b for a, b in pairwise(curve[: peak + 1]))
    assert all(a > b for a, b in pairwise(curve[peak:]))
    assert curve[-1] < 0.05 * cfg.optimizer.lr


@pytest.mark.parametrize("stalls", [True, False])
def test_plateau_reduces_only_when_the_monitor_stalls(train_run, stalls):
    """With a learning rate too small to change a single validation prediction, val/acc stalls and the lr
    is cut by ``factor`` after ``patience`` epochs; while val/acc improves it stays."""
    lr = 1e-6 if stalls else 1e-3
    monitor = ["trainer.monitor=val/acc", "trainer.monitor_mode=max", "scheduler.patience=0"]
    curve, cfg, run_dir = lr_curve(train_run, "plateau", f"optimizer.lr={lr}", *monitor)
    val_acc = scalars(run_dir, "val/acc")
    assert (len(set(val_acc)) == 1) if stalls else (val_acc == sorted(set(val_acc)))
    expected = [lr, lr, lr * cfg.scheduler.factor] if stalls else [lr] * EPOCHS
    assert per_epoch(curve) == pytest.approx(expected)
