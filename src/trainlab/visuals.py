"""Pictures of a run for the loggers (TensorBoard's Images, Text and PR Curves tabs), because people would
rather look than read.

At the start, the first training batch as the model sees it (augmented): for images a grid in image units.
At test time, the confusion matrix, the test inputs the model got most confidently wrong with their true and
predicted labels, and one precision-recall curve per class; for regression, predicted against true values.
Drawn with PIL (no plotting library needed); ``predict.py`` saves the same confusion matrix as a PNG.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torchmetrics.functional.classification import multiclass_confusion_matrix
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import make_grid

from trainlab import distributed
from trainlab.callbacks import Callback, FitContext, TestOutputs
from trainlab.dataloader.base import Inputs, sample

if TYPE_CHECKING:
    from trainlab.dataloader import BatchedData
    from trainlab.loggers import Logger

FONT = ImageFont.load_default(size=11)
INK, GRID = (40, 40, 40), (200, 200, 200)


def _text_width(text: str) -> int:
    return int(FONT.getlength(text))


def labelled_grid(images: torch.Tensor, captions: Sequence[str], columns: int = 8) -> Image.Image:
    """Images (N, C, H, W) in [0, 1], enlarged to at least 64 pixels, each over its caption."""
    scale = max(1, -(-64 // images.shape[-1]))
    tiles = []
    for image, caption in zip(images.float().clamp(0, 1).cpu(), captions, strict=True):
        picture = to_pil_image(image.expand(3, -1, -1)).resize(
            (image.shape[-1] * scale, image.shape[-2] * scale), Image.Resampling.NEAREST
        )
        width = max(picture.width, max((_text_width(line) for line in caption.splitlines()), default=0) + 4)
        tile = Image.new("RGB", (width, picture.height + 14 * len(caption.splitlines())), "white")
        tile.paste(picture, ((width - picture.width) // 2, 0))
        ImageDraw.Draw(tile).multiline_text((2, picture.height), caption, fill=INK, font=FONT, spacing=2)
        tiles.append(tile)
    width, height = max(t.width for t in tiles), max(t.height for t in tiles)
    tensors = [pil_to_tensor(_padded(t, width, height)) for t in tiles]
    return to_pil_image(make_grid(tensors, nrow=columns, padding=4, pad_value=255))


def _padded(tile: Image.Image, width: int, height: int) -> Image.Image:
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(tile, (0, 0))
    return canvas


def confusion_matrix_image(
    predictions: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]
) -> Image.Image:
    """Rows: true classes, columns: predicted; cells shaded by the row's share (recall), counts written."""
    k = len(classes)
    matrix = multiclass_confusion_matrix(predictions.cpu(), targets.cpu(), k)
    cell = max(14, min(44, 600 // k))
    names = [f"{i}: {name[:14]}" for i, name in enumerate(classes)]
    left, top = max(_text_width(n) for n in names) + 10, 34
    image = Image.new("RGB", (left + k * cell + 10, top + k * cell + 24), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 2), "predicted class ->", fill=INK, font=FONT)
    draw.text((2, top - 14), "true class", fill=INK, font=FONT)
    shares = matrix.float() / matrix.sum(1, keepdim=True).clamp_min(1)
    for i in range(k):
        draw.text((2, top + i * cell + (cell - 11) // 2), names[i], fill=INK, font=FONT)
        draw.text((left + i * cell + 2, top - 14), str(i), fill=INK, font=FONT)
        for j in range(k):
            share = float(shares[i, j])
            colour = tuple(int(255 - share * (255 - c)) for c in (31, 78, 160))  # white to dark blue
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell)
            draw.rectangle(box, fill=colour, outline=GRID)
            if cell >= 24:
                count = str(int(matrix[i, j]))
                draw.text(
                    (box[0] + (cell - _text_width(count)) // 2, box[1] + (cell - 11) // 2),
                    count,
                    fill="white" if share > 0.5 else INK,
                    font=FONT,
                )
    accuracy = float(matrix.diagonal().sum() / matrix.sum().clamp_min(1))
    draw.text((left, top + k * cell + 6), f"accuracy {accuracy:.4f} on {int(matrix.sum())}", fill=INK, font=FONT)
    return image


def scatter_image(true: torch.Tensor, predicted: torch.Tensor, size: int = 360) -> Image.Image:
    """Predicted against true values, with the diagonal where they would agree."""
    margin = 48
    low = float(torch.minimum(true.min(), predicted.min()))
    high = float(torch.maximum(true.max(), predicted.max()))
    span = (high - low) or 1.0
    image = Image.new("RGB", (size + margin + 10, size + margin + 10), "white")
    draw = ImageDraw.Draw(image)

    def point(x: float, y: float) -> tuple[float, float]:
        return margin + (x - low) / span * size, 10 + size - (y - low) / span * size

    draw.rectangle((margin, 10, margin + size, 10 + size), outline=GRID)
    draw.line((*point(low, low), *point(high, high)), fill=GRID, width=2)
    for x, y in zip(true.tolist(), predicted.tolist(), strict=True):
        cx, cy = point(x, y)
        draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=(31, 78, 160))
    draw.text((margin, size + 14), f"{low:.3g}", fill=INK, font=FONT)
    draw.text((margin + size - _text_width(f"{high:.3g}"), size + 14), f"{high:.3g}", fill=INK, font=FONT)
    draw.text((margin + size // 2 - 12, size + 28), "true", fill=INK, font=FONT)
    draw.text((2, 10), f"{high:.3g}", fill=INK, font=FONT)
    draw.text((2, size), f"{low:.3g}", fill=INK, font=FONT)
    draw.text((2, 10 + size // 2), "predicted", fill=INK, font=FONT)
    return image


class Pictures(Callback):
    """Logs the pictures described in this module's docstring, through the run's loggers. How a batch of
    inputs looks is the data set's to say (``BatchedData.show``: a grid of images, a table of texts; nothing
    for table rows).

    Args:
        num_images: inputs in the training grid and in the picture of misclassified test inputs.
    """

    def __init__(self, num_images: int):
        self.num_images = num_images
        self._worst: list[tuple[float, Any, int, int]] = []  # this rank's (p_true, sample, true, predicted)

    def on_fit_start(self, context: FitContext) -> None:
        if context.loop.global_step:  # resumed: logged already
            return
        data = context.data
        x, y = next(iter(data.train_batches(0)))
        y = y[: self.num_images]
        samples = [sample(x, i) for i in range(len(y))]
        captions = self._names(data, y) if data.task.is_classification else [f"{v:.4g}" for v in y.tolist()]
        log_picture(context.logger, "inputs/train", data.show(samples, captions), 0)

    def on_test_batch_end(
        self, context: FitContext, inputs: Inputs, targets: torch.Tensor, outputs: torch.Tensor
    ) -> None:
        """Keep the ``num_images`` misclassified test inputs with the lowest probability of their true class
        (classifiers only)."""
        task = context.data.task
        if not task.is_classification:
            return
        outputs, targets = outputs.cpu(), targets.cpu()
        predicted = task.predict(outputs)
        p_true = task.probabilities(outputs).gather(1, targets.view(-1, 1)).squeeze(1)
        wrong = (predicted != targets).nonzero().squeeze(1)
        worst = wrong[p_true[wrong].argsort()[: self.num_images]].tolist()  # at most num_images per batch
        kept = [(float(p_true[i]), sample(inputs, i, cpu=True), int(targets[i]), int(predicted[i])) for i in worst]
        self._worst = self._keep_worst([self._worst, kept])

    def on_test_end(self, context: FitContext, test: TestOutputs) -> None:
        data, logger, step = context.data, context.logger, context.loop.global_step
        task = data.task
        worst = self._keep_worst(distributed.gather(self._worst))  # every rank's, so the worst of all
        self._worst = []
        if not task.is_classification:
            logger.log_image(
                "test/predicted_vs_true", scatter_image(test.targets.float(), task.predict(test.outputs)), step
            )
            return
        classes = data.class_names
        logger.log_image(
            "test/confusion_matrix",
            confusion_matrix_image(task.predict(test.outputs), test.targets, classes),
            step,
        )
        probabilities = task.probabilities(test.outputs)
        for index, name in enumerate(classes):
            logger.log_pr_curve(
                "test/pr_curve/" + re.sub(r"[^\w.-]+", "_", name),
                test.targets == index,
                probabilities[:, index],
                step,
            )
        if worst:
            _, samples, true, predicted = zip(*worst, strict=True)
            names = zip(self._names(data, true), self._names(data, predicted), strict=True)
            captions = [f"true {t}\npred {p}" for t, p in names]
            log_picture(logger, "test/misclassified", data.show(list(samples), captions), step)

    def _keep_worst(self, parts: list[list[tuple]]) -> list[tuple]:
        """The ``num_images`` items of ``parts`` with the lowest probability of the true class."""
        return sorted(itertools.chain.from_iterable(parts), key=lambda item: item[0])[: self.num_images]

    @staticmethod
    def _names(data: BatchedData, labels: torch.Tensor | Sequence[int]) -> list[str]:
        return [data.class_names[i] for i in torch.as_tensor(labels).tolist()]


def log_picture(logger: Logger, tag: str, picture: Image.Image | str | None, step: int) -> None:
    """A data set's picture of some inputs (``BatchedData.show``): an image, Markdown text, or nothing."""
    if isinstance(picture, Image.Image):
        logger.log_image(tag, picture, step)
    elif picture is not None:
        logger.log_text(tag, picture, step)
