"""Use a trained model: predict on files from the checkpoint (or its ONNX export) alone, or evaluate its
test split.

Predicting (``input=...``) needs nothing but the checkpoint: its ``InputSpec`` says how to read and
preprocess the inputs, its config's model node and weights give the model (``trainlab.inference``).
Evaluating the test split (``input`` null) rebuilds the training data set, so it needs the training data.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from trainlab.dataloader.base import chunk, count
from trainlab.devices import pick_device
from trainlab.errors import ConfigError, DataError
from trainlab.inference import Predictor, beside, load_trained, output_path, score
from trainlab.progress import format_metrics
from trainlab.trainer import evaluate
from trainlab.visuals import confusion_matrix_image

log = logging.getLogger(__name__)


def predict(cfg: DictConfig) -> dict[str, Any]:
    """``input`` null: the test split's metrics (the training run's ``test/...``); else predictions."""
    ckpt_path = Path(to_absolute_path(cfg.ckpt))
    output = to_absolute_path(cfg.output) if cfg.output else None
    if cfg.input is None:
        if ckpt_path.suffix.lower() == ".onnx":
            raise ConfigError(
                "evaluating the test split needs the .ckpt (its config names the data); or pass input="
            )
        device = pick_device(cfg.device)
        _, data, model = load_trained(ckpt_path, device)
        metrics = evaluate(model, data.batches("test"), data.task, "test", device)
        path = output_path(output, beside(ckpt_path, "predict_metrics.json"))
        path.write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("test metrics of %s: %s (written to %s)", ckpt_path, format_metrics(metrics), path)
        return metrics

    predictor = Predictor.load(ckpt_path, cfg.device)
    path = Path(to_absolute_path(cfg.input))
    if not path.exists():
        raise DataError(f"input={path} does not exist; pass {predictor.kind.files}")
    names, raw, targets, notes = predictor.kind.read(path)
    starts = range(0, count(raw), cfg.batch_size)
    outputs = torch.cat([predictor(chunk(raw, i, i + cfg.batch_size)) for i in starts])
    path = output_path(output, Path.cwd() / "predictions.csv")
    write_predictions(path, names, predictor.answers(outputs), notes)
    log.info("wrote %d predictions to %s", len(names), path)
    if notes and any(notes):
        flagged = [f"{name} ({note})" for name, note in zip(names, notes, strict=True) if note][:5]
        log.warning("%d inputs are flagged in the note column: %s", sum(map(bool, notes)), ", ".join(flagged))
    if targets is None:
        return {}
    task = predictor.task
    metrics = score(task, outputs, targets, "input")
    log.info("metrics on %s: %s", cfg.input, format_metrics(metrics))
    if task.is_classification:
        picture = path.with_name(f"{path.stem}_confusion_matrix.png")
        confusion_matrix_image(task.predict(outputs), targets, predictor.spec.class_names).save(picture)
        log.info("confusion matrix: %s", picture)
    return metrics


def write_predictions(
    path: Path, names: list[str], answers: list[dict[str, Any]], notes: list[str] | None = None
) -> None:
    """CSV rows: the input's name, the prediction and, for classifiers, its label and one probability per
    class (``Predictor.answers``); where the reader flagged inputs (``Read.notes``), a last ``note`` column."""
    if "value" in answers[0]:
        header = ["input", "prediction"]
        rows = [[name, answer["value"]] for name, answer in zip(names, answers, strict=True)]
    else:
        classes = list(answers[0]["probabilities"])
        header = ["input", "prediction", "label"] + [f"prob_{c}" for c in classes]
        rows = [
            [name, a["class_index"], a["label"], *(f"{p:.6f}" for p in a["probabilities"].values())]
            for name, a in zip(names, answers, strict=True)
        ]
    if notes and any(notes):
        header.append("note")
        rows = [[*row, note] for row, note in zip(rows, notes, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
