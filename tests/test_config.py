"""Every option of every config group composes with hydra.compose and instantiates into the objects it names;
sizes and schedule lengths are inferred, never typed twice."""

import pytest
import torch
from conftest import CONF, make_config, own_data
from hydra.utils import get_class
from omegaconf import DictConfig

from trainlab.dataloader.base import call, chunk
from trainlab.run import Run, build

GROUPS = ["model", "dataset", "augment", "optimizer", "scheduler", "trainer", "callbacks", "experiment", "debug"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]

# What the foundation issue promises; a missing YAML file fails here rather than in a user's hands.
PROMISED = {
    "model": {"linear", "mlp", "cnn", "resnet"},
    "dataset": {
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "iris",
        "wine",
        "breast_cancer",
        "diabetes",
        "linear",
    },
    "optimizer": {"sgd", "adam", "adamw", "rmsprop", "adagrad"},
    "scheduler": {"none", "step", "multistep", "exponential", "cosine", "plateau", "onecycle", "warmup_cosine"},
    "trainer": {"default"},
    "experiment": {"mnist_cnn", "cifar10_resnet"},
    "debug": {"fast"},
}


def test_every_promised_option_exists():
    available = {group: {option for g, option in OPTIONS if g == group} for group in GROUPS}
    for group, options in PROMISED.items():
        assert options <= available[group], f"conf/{group} lacks {options - available[group]}"


def assert_run_matches_config(run: Run, cfg: DictConfig) -> None:
    """Each object is the class its config names, configured as it says, and the model fits the data."""
    assert isinstance(run.model, get_class(cfg.model._target_))
    assert isinstance(run.data, get_class(cfg.dataset._target_))
    if cfg.dataset.get("task"):
        assert run.data.task.kind == cfg.dataset.task
    assert isinstance(run.optimizer, get_class(cfg.optimizer._target_))
    assert run.optimizer.defaults["lr"] == cfg.optimizer.lr  # (a scheduler may have moved the current lr)
    if cfg.scheduler:
        assert isinstance(run.scheduler, get_class(cfg.scheduler._target_))
        assert run.scheduler_interval == cfg.scheduler.interval
    else:
        assert run.scheduler is None
    assert isinstance(run.trainer, get_class(cfg.trainer._target_))
    assert (run.trainer.max_epochs, run.trainer.monitor.name) == (cfg.trainer.max_epochs, cfg.trainer.monitor)
    for name, callback in cfg.callbacks.items():
        assert isinstance(run.trainer.callbacks[name], get_class(callback._target_))

    x, _ = next(run.data.train_batches(0))
    run.model.eval()
    with torch.no_grad():
        assert call(run.model, chunk(x, 0, 4)).shape == (4, run.data.num_outputs)


TEXT_MODELS = {"embedding_bag", "rnn", "transformer"}  # models of texts: tried on dataset=text, and it with one


def required_settings(group: str, option: str, folder) -> list[str]:
    """What an option needs to run: a user's own files, and for texts a text model or a data set of texts;
    the SMS Spam experiment a small file of texts in place of ../shared/datasets' (tests never need it)."""
    if (group, option) == ("experiment", "sms_spam"):
        return [*own_data("text", folder), "dataset.text=text", "dataset.target=label"]
    if group == "dataset":
        return own_data(option, folder) + (["model=embedding_bag"] if option == "text" else [])
    return ["dataset=text", *own_data("text", folder)] if group == "model" and option in TEXT_MODELS else []


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, image_data_dir, tmp_path):
    required = required_settings(group, option, tmp_path)
    cfg = make_config(f"{group}={option}", f"paths.data_dir={image_data_dir}", *required)
    assert_run_matches_config(build(cfg), cfg)


@pytest.mark.parametrize(
    "model, dataset, input_shape, outputs",
    [
        ("cnn", "cifar10", (3, 32, 32), 10),
        ("mlp", "iris", (4,), 3),
        ("linear", "breast_cancer", (30,), 1),  # binary: one logit
        ("mlp", "diabetes", (10,), 1),
    ],
)
def test_model_sizes_come_from_the_data_set(model, dataset, input_shape, outputs, image_data_dir):
    cfg = make_config(f"model={model}", f"dataset={dataset}", f"paths.data_dir={image_data_dir}")
    run = build(cfg)
    assert run.data.input_shape == input_shape and run.data.num_outputs == outputs
    assert_run_matches_config(run, cfg)


def test_schedule_lengths_follow_the_trainer():
    cosine = build(make_config("scheduler=cosine", "trainer.max_epochs=7"))
    assert cosine.scheduler.T_max == 7
    onecycle = build(make_config("scheduler=onecycle", "trainer.max_epochs=3", "trainer.limit_batches=5"))
    assert onecycle.scheduler.total_steps == 3 * 5
    accumulated = build(
        make_config("scheduler=warmup_cosine", "trainer.max_epochs=2", "trainer.accumulate_grad_batches=2")
    )
    assert accumulated.scheduler.total_steps == 2 * accumulated.trainer.steps_per_epoch(accumulated.data)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_plateau_takes_its_mode_from_the_monitor(mode):
    run = build(make_config("scheduler=plateau", "trainer.monitor=val/acc", f"trainer.monitor_mode={mode}"))
    assert run.scheduler.mode == mode


def test_experiment_sets_several_groups_and_stays_overridable(image_data_dir):
    cfg = make_config("experiment=mnist_cnn", "trainer.max_epochs=1", f"paths.data_dir={image_data_dir}")
    assert cfg.model._target_.endswith("CNN") and cfg.dataset.name == "MNIST"
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.monitor == "val/acc"


def test_debug_fast_shrinks_any_config():
    cfg = make_config("model=cnn", "debug=fast")
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_batches) == (1, 5)
