"""Use a trained model: evaluate its test split, or predict on files, with the training preprocessing."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from torch import nn

from trainlab import checkpoint
from trainlab.dataloader import BatchedData, DataError
from trainlab.devices import pick_device
from trainlab.progress import format_metrics
from trainlab.run import build_data_and_model
from trainlab.trainer import evaluate
from trainlab.visuals import confusion_matrix_image

log = logging.getLogger(__name__)


def load_trained(ckpt_path: str | Path, device: torch.device) -> tuple[DictConfig, BatchedData, nn.Module]:
    """Rebuild data and model from the config inside a checkpoint and load its weights and preprocessing."""
    state = checkpoint.load(ckpt_path, map_location="cpu")
    cfg = checkpoint.trusted_config(state, ckpt_path)
    data, model = build_data_and_model(cfg)
    data.load_state_dict(state["input_spec"])
    checkpoint.load_weights(model, state, ckpt_path)
    return cfg, data.to(device), model.to(device).eval()


def predict(cfg: DictConfig) -> dict[str, Any]:
    """``input`` null: the test split's metrics (the training run's ``test/...``); else predictions."""
    device = pick_device(cfg.device)
    ckpt_path = Path(to_absolute_path(cfg.ckpt))
    _, data, model = load_trained(ckpt_path, device)
    if cfg.input is None:
        metrics = evaluate(model, data.batches("test"), data.task, "test", device)
        output = (
            Path(to_absolute_path(cfg.output)) if cfg.output else ckpt_path.parent.parent / "predict_metrics.json"
        )
        output.write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("test metrics of %s: %s (written to %s)", ckpt_path, format_metrics(metrics), output)
        return metrics

    input_path = Path(to_absolute_path(cfg.input))
    if not input_path.exists():
        raise DataError(f"input={input_path} does not exist; pass an image, a folder of images or a CSV file")
    names, raw, targets = data.read_inputs(input_path)
    x = data.transform(raw.to(device))
    with torch.no_grad():
        outputs = torch.cat([model(x[i : i + cfg.batch_size]) for i in range(0, len(x), cfg.batch_size)])
    output = Path(to_absolute_path(cfg.output or "predictions.csv"))
    write_predictions(output, names, outputs, data)
    log.info("wrote %d predictions to %s", len(names), output)
    if targets is None:
        return {}
    metrics = evaluate(model, [(x, targets.to(device))], data.task, "input", device)
    log.info("metrics on %s: %s", cfg.input, format_metrics(metrics))
    if data.task.is_classification:
        picture = output.with_name(f"{output.stem}_confusion_matrix.png")
        confusion_matrix_image(data.task.predict(outputs), targets, data.class_names).save(picture)
        log.info("confusion matrix: %s", picture)
    return metrics


def write_predictions(path: Path, names: list[str], outputs: torch.Tensor, data: BatchedData) -> None:
    """CSV rows: the input's name, the prediction and, for classifiers, one probability per class."""
    task = data.task
    predictions = task.predict(outputs).cpu()
    header = ["input", "prediction"]
    rows: list[list[Any]] = [[name, p.item()] for name, p in zip(names, predictions, strict=True)]
    if task.is_classification:
        classes = data.classes or [str(i) for i in range(task.num_classes or 2)]
        header[1:] = ["prediction", "label"] + [f"prob_{c}" for c in classes]
        probabilities = task.probabilities(outputs).cpu()
        rows = [
            [name, int(p), classes[int(p)], *(f"{v:.6f}" for v in probs.tolist())]
            for name, p, probs in zip(names, predictions, probabilities, strict=True)
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
