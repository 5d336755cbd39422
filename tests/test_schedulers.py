"""The shape of every conf/scheduler/*.yaml schedule, built as a run builds it (hydra compose, then
trainlab.run.build_scheduler) on an optimizer of one parameter and stepped by hand. No training run; that the
trainer steps them and logs lr is tested in test_training.py."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from conftest import CONF, make_config
from hydra.utils import instantiate

from trainlab.run import build_data, build_scheduler

EPOCHS, STEPS = 6, 5  # trainer.max_epochs, and trainer.limit_batches: optimizer steps per epoch
LR = 0.1


def schedule(name: str, *overrides: str) -> tuple[object, torch.optim.Optimizer, str]:
    """The scheduler ``scheduler=<name>`` builds, for a run of EPOCHS epochs of STEPS steps."""
    run = [f"optimizer.lr={LR}", f"trainer.max_epochs={EPOCHS}", f"trainer.limit_batches={STEPS}"]
    cfg = make_config(f"scheduler={name}", *run, *overrides)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.optimizer.lr)
    trainer = instantiate(cfg.trainer)
    scheduler, interval = build_scheduler(cfg, optimizer, trainer, build_data(cfg))
    return scheduler, optimizer, interval


def lrs(name: str, *overrides: str, metric=None) -> list[float]:
    """The lr of every epoch (epoch-wise schedules) or every optimizer step (step-wise) of the run."""
    scheduler, optimizer, interval = schedule(name, *overrides)
    curve = []
    for i in range(EPOCHS if interval == "epoch" else EPOCHS * STEPS):
        curve.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step(metric(i)) if metric else scheduler.step()
    return curve


def test_every_scheduler_config_is_tested_here():
    tested = {"none", "step", "multistep", "exponential", "cosine", "onecycle", "warmup_cosine", "plateau"}
    assert {path.stem for path in (CONF / "scheduler").glob("*.yaml")} == tested


def test_none_is_no_scheduler():
    scheduler, _, interval = schedule("none")
    assert scheduler is None and interval == "epoch"


def test_step_multiplies_by_gamma_every_step_size_epochs():
    assert lrs("step") == pytest.approx([LR * 0.5**e for e in range(EPOCHS)])  # step_size 1, gamma 0.5
    assert lrs("step", "scheduler.step_size=2") == pytest.approx([LR, LR, LR / 2, LR / 2, LR / 4, LR / 4])


def test_multistep_drops_at_its_milestones():
    assert lrs("multistep") == pytest.approx([LR, LR, LR / 10, LR / 10, LR / 100, LR / 100])  # [2, 4]


def test_exponential_multiplies_by_gamma_every_epoch():
    assert lrs("exponential") == pytest.approx([LR * 0.7**e for e in range(EPOCHS)])


def test_cosine_reaches_its_minimum_at_t_max():
    """T_max is trainer.max_epochs: the lr falls along half a cosine to eta_min, reached after the run."""
    scheduler, optimizer, _ = schedule("cosine", "scheduler.eta_min=0.01")
    curve = []
    for _ in range(EPOCHS + 1):
        curve.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert curve[0] == pytest.approx(LR) and curve[EPOCHS // 2] == pytest.approx((LR + 0.01) / 2)
    assert all(a > b for a, b in pairwise(curve))
    assert curve[EPOCHS] == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["onecycle", "warmup_cosine"])
def test_per_step_schedules_rise_to_the_optimizer_lr_then_fall(name):
    curve = lrs(name)  # as many steps as the run has: OneCycleLR refuses one more
    peak = curve.index(max(curve))
    assert 0 < peak < len(curve) // 2
    assert max(curve) == pytest.approx(LR, rel=0.01)
    assert all(a < b for a, b in pairwise(curve[: peak + 1]))
    assert all(a > b for a, b in pairwise(curve[peak:]))
    assert curve[-1] < 0.01 * LR


@pytest.mark.parametrize("warmup_fraction", [0.1, 0.0])
def test_warmup_cosine_is_linear_then_half_a_cosine_down_to_its_minimum(warmup_fraction):
    """The lr of step s: warm-up from warmup_start_factor * lr to lr over warmup_fraction of the steps, then
    a cosine from lr to min_lr_factor * lr over the rest (written out here); no warm-up: the cosine from the
    first step."""
    start, floor, steps = 0.01, 0.2, EPOCHS * STEPS
    warmup = round(warmup_fraction * steps)
    curve = lrs(
        "warmup_cosine",
        f"scheduler.warmup_fraction={warmup_fraction}",
        f"scheduler.warmup_start_factor={start}",
        f"scheduler.min_lr_factor={floor}",
    )
    cosine = [
        floor + (1 - floor) * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))) / 2
        for s in range(warmup, steps)
    ]
    expected = [start + (1 - start) * s / warmup for s in range(warmup)] + cosine
    assert curve == pytest.approx([LR * factor for factor in expected])


def test_plateau_halves_the_lr_after_patience_epochs_without_improvement():
    """mode min (trainer.monitor_mode), factor 0.5, patience 1: a metric that improves keeps the lr; one that
    stalls from epoch 2 on cuts it once more than `patience` epochs have not improved on the best."""
    assert lrs("plateau", metric=lambda epoch: 1.0 / (epoch + 1)) == [LR] * EPOCHS
    stalled = lrs("plateau", metric=lambda epoch: max(1.0 - epoch, 0.0))  # 1, 0, 0, 0, ...
    assert stalled == pytest.approx([LR, LR, LR, LR, LR / 2, LR / 2])
