"""Task.loss with label smoothing, against the definitions written out here; the gradient the training step
starts backward from, against autograd's; and the plain loss that evaluation reports. No training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.tasks import Task
from trainlab.trainer import evaluate

SMOOTHING = [0.0, 0.1, 0.5]


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("smoothing", SMOOTHING)
def test_multiclass_loss_is_cross_entropy_on_targets_mixed_with_the_uniform_distribution(generator, smoothing):
    outputs = torch.randn(32, 5, generator=generator)
    targets = torch.randint(0, 5, (32,), generator=generator)
    soft = (1 - smoothing) * F.one_hot(targets, 5) + smoothing / 5
    expected = -(soft * outputs.log_softmax(-1)).sum(-1).mean()
    loss = Task("multiclass", num_classes=5).loss(outputs, targets, smoothing)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # F.cross_entropy's label_smoothing


@pytest.mark.parametrize("smoothing", SMOOTHING)
def test_binary_loss_is_binary_cross_entropy_on_targets_pulled_towards_one_half(generator, smoothing):
    outputs = torch.randn(32, 1, generator=generator)  # one logit per sample
    targets = torch.randint(0, 2, (32,), generator=generator)
    soft = targets * (1 - smoothing) + smoothing / 2
    p = outputs.squeeze(-1).sigmoid()
    expected = -(soft * p.log() + (1 - soft) * (1 - p).log()).mean()
    loss = Task("binary", num_classes=2).loss(outputs, targets, smoothing)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_regression_loss_ignores_label_smoothing(generator):
    outputs = torch.randn(32, 1, generator=generator)
    targets = 3 + 2 * torch.randn(32, generator=generator)
    task = Task("regression", target_mean=3.0, target_std=2.0)  # the model learns standardised targets
    expected = ((outputs.squeeze(-1) - (targets - 3) / 2) ** 2).mean()
    for smoothing in SMOOTHING:
        assert task.loss(outputs, targets, smoothing).item() == pytest.approx(expected.item(), rel=1e-6)


TASKS = {
    "multiclass": (Task("multiclass", num_classes=5), (37, 5)),
    "binary": (Task("binary", num_classes=2), (37, 1)),
    "regression": (Task("regression", target_mean=3.0, target_std=2.0), (37, 1)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", sorted(TASKS))
def test_the_loss_gradient_is_autograds_gradient_of_the_scaled_loss(generator, kind, smoothing, dtype):
    """``loss_gradient`` (what the training step sends backward, weighted as under accumulation) is what
    autograd gives for the loss, with or without smoothing, in the outputs' dtype (bf16 under autocast)."""
    task, shape = TASKS[kind]
    outputs = torch.randn(shape, generator=generator).to(dtype).requires_grad_()
    targets = torch.randint(0, shape[1] if kind == "multiclass" else 2, shape[:1], generator=generator)
    if kind == "regression":
        targets = 3 + 2 * torch.randn(shape[:1], generator=generator)
    (0.25 * task.loss(outputs.float(), targets, smoothing)).backward()
    gradient = task.loss_gradient(outputs, targets, smoothing, scale=0.25)
    assert gradient.dtype == dtype
    torch.testing.assert_close(gradient, outputs.grad, rtol=1e-5, atol=1e-8)


def test_evaluation_reports_the_plain_loss_over_all_samples(generator):
    """What val/loss and test/loss are, whatever trainer.label_smoothing: the plain cross-entropy of every
    sample, with a smaller last batch weighted by its size."""
    x, y = torch.randn(70, 4, generator=generator), torch.randint(0, 3, (70,), generator=generator)
    model = nn.Linear(4, 3)
    batches = list(zip(x.split(32), y.split(32), strict=True))  # 32, 32, 6
    metrics = evaluate(model, batches, Task("multiclass", num_classes=3), "val", torch.device("cpu"))
    with torch.no_grad():
        plain = F.cross_entropy(model(x), y).item()
        smoothed = F.cross_entropy(model(x), y, label_smoothing=0.1).item()
    assert metrics["val/loss"] == pytest.approx(plain, rel=1e-5)
    assert abs(plain - smoothed) > 1e-3  # the two differ, so the check above tells them apart
