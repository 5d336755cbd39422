"""A user's own CSV file as a data set (``dataset=csv``): numeric columns standardised, text columns one-hot
encoded, missing values dropped or imputed, the task read off the target column.

Everything fitted (columns, categories, training means and standard deviations, class names) is part of
``state_dict()``, so it travels in the checkpoint and ``predict.py input=rows.csv`` encodes new rows exactly
as the training rows were encoded, whatever those rows contain.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.utils import to_absolute_path

from trainlab.dataloader import DataError, Splits, TableData
from trainlab.tasks import Kind

log = logging.getLogger(__name__)

NA_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "None", "?")


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of a CSV file as stripped strings."""
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist; set dataset.path to your file")
    with open(path, newline="") as f:
        lines = [[cell.strip() for cell in line] for line in csv.reader(f) if line]
    if len(lines) < 2:
        raise DataError(f"{path} needs a header line and at least one row")
    header, rows = lines[0], lines[1:]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}, line {number}: {len(row)} cells, but the header names {len(header)} columns")
    return header, rows


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _label(text: str) -> str:
    """A class label in one spelling: ``1``, ``1.0`` and `` 1`` are the same class."""
    value = _number(text)
    if value is None:
        return text
    return str(int(value)) if value.is_integer() else str(value)


def infer_task(values: Sequence[str], max_classes: int) -> Kind:
    """Text, or at most ``max_classes`` distinct integers: classification (binary with 2); else regression."""
    numbers = [_number(v) for v in values]
    distinct = len(set(map(_label, values)))
    if any(n is None for n in numbers) or (all(n.is_integer() for n in numbers) and distinct <= max_classes):
        return "binary" if distinct == 2 else "multiclass"
    return "regression"


class CSVTable(TableData):
    """One row per sample, a header line, one target column.

    Args:
        path: the CSV file.
        target: the target column's name.
        task: ``multiclass``, ``binary`` or ``regression``; null: inferred from the target column (text, or
            at most ``max_classes`` distinct integers: classification, binary with 2 classes; else regression).
        features: the feature columns; null: every column but the target.
        categorical: columns to one-hot encode although their values are numbers (text columns always are).
        missing: ``drop`` the rows with a missing feature, or ``impute`` them (numbers: the training mean;
            categories: none, all their one-hot columns 0). Rows without a target are always dropped.
        na_values: cell texts that mean "missing".
        max_classes: at most this many distinct integer targets make an inferred classification task.
    """

    def __init__(
        self,
        path: str | None,
        target: str | None,
        task: Kind | None = None,
        features: Sequence[str] | None = None,
        categorical: Sequence[str] = (),
        missing: str = "drop",
        na_values: Sequence[str] = NA_VALUES,
        max_classes: int = 10,
        **kwargs,
    ):
        if path is None:
            raise DataError("dataset=csv needs the file: add dataset.path=<your.csv> dataset.target=<column>")
        if missing not in ("drop", "impute"):
            raise DataError(f"dataset.missing must be drop or impute, got {missing!r}")
        self.path, self.target_name, self.na_values = Path(to_absolute_path(path)), target, set(na_values)
        header, rows = read_csv(self.path)
        if target not in header:
            raise DataError(
                f"dataset.target={target} is not a column of {self.path}; set it to one of {', '.join(header)}"
            )
        features = list(features) if features else [c for c in header if c != target]
        self._check_columns(header, features, self.path)
        rows = self._drop_missing(header, rows, features, missing)
        table = {name: [row[header.index(name)] for row in rows] for name in [*features, target]}
        # category names (not statistics) come from the whole file, so a category first seen in val or test
        # still has its column; means and standard deviations come from the training split alone.
        self.categories: dict[str, list[str] | None] = {
            name: sorted({v for v in table[name] if v not in self.na_values})
            if name in categorical or any(_number(v) is None for v in table[name] if v not in self.na_values)
            else None
            for name in features
        }
        targets = table.pop(target)
        task = task or infer_task(targets, max_classes)
        if task != "regression":
            targets = [_label(v) for v in targets]
            classes = sorted(set(targets), key=lambda c: (_number(c) is None, _number(c) or 0.0, c))
            if len(classes) < 2:
                raise DataError(f"target column {target!r} has a single value {classes}; nothing to classify")
        elif any(_number(v) is None for v in targets):
            raise DataError(f"target column {target!r} holds text, but dataset.task=regression needs numbers")
        self._table, self._targets = table, targets
        self._classes = classes if task != "regression" else None
        super().__init__(task=task, **kwargs)
        del self._table, self._targets

    # -- reading -------------------------------------------------------------------------------------
    @staticmethod
    def _check_columns(header: list[str], columns: Sequence[str], path: Path) -> None:
        absent = [c for c in columns if c not in header]
        if absent:
            raise DataError(f"{path} has no column {', '.join(absent)}; its columns are {', '.join(header)}")

    def _drop_missing(self, header, rows, features, missing) -> list[list[str]]:
        target = header.index(self.target_name)
        kept = [row for row in rows if row[target] not in self.na_values]
        if len(kept) < len(rows):
            log.info("%s: dropped %d rows without a target value", self.path.name, len(rows) - len(kept))
        columns = [header.index(name) for name in features]
        incomplete = sum(any(row[i] in self.na_values for i in columns) for row in kept)
        if incomplete and missing == "drop":
            kept = [row for row in kept if not any(row[i] in self.na_values for i in columns)]
            log.info(
                "%s: dropped %d of %d rows with missing values (dataset.missing=drop)",
                self.path.name,
                incomplete,
                len(rows),
            )
        elif incomplete:
            log.info(
                "%s: imputed missing values in %d of %d rows (dataset.missing=impute)",
                self.path.name,
                incomplete,
                len(rows),
            )
        if not kept:
            raise DataError(
                f"{self.path}: no rows left after dropping those with missing values; try dataset.missing=impute"
            )
        return kept

    def encode(self, table: dict[str, list[str]]) -> torch.Tensor:
        """Feature columns (cell texts) to a float matrix: numbers as they are (missing: NaN, which
        ``transform`` imputes), categories one-hot (missing or unknown: all zeros)."""
        blocks = []
        for name, categories in self.categories.items():
            cells = table[name]
            if categories is None:
                values = [np.nan if v in self.na_values else _number(v) for v in cells]
                if None in values:
                    row = values.index(None)
                    raise DataError(f"column {name!r} held numbers in training, but row {row} has {cells[row]!r}")
                blocks.append(np.asarray(values, dtype=np.float32)[:, None])
            else:
                index = {category: i for i, category in enumerate(categories)}
                codes = np.asarray([index.get(v, len(categories)) for v in cells])
                blocks.append(np.eye(len(categories) + 1, len(categories), dtype=np.float32)[codes])
        return torch.from_numpy(np.concatenate(blocks, axis=1))

    def load(self) -> Splits:
        x = self.encode(self._table)
        if self._classes is None:
            y = torch.tensor([float(v) for v in self._targets])
        else:
            index = {label: i for i, label in enumerate(self._classes)}
            y = torch.tensor([index[v] for v in self._targets])
        return Splits(x, y, classes=self._classes, feature_names=[name for name, _ in self._encoded_columns()])

    def _encoded_columns(self) -> list[tuple[str, bool]]:
        """The columns ``encode`` makes: their names (``colour=red`` for one-hot ones) and whether one-hot."""
        columns = []
        for name, categories in self.categories.items():
            if categories is None:
                columns.append((name, False))
            else:
                columns += [(f"{name}={category}", True) for category in categories]
        return columns

    # -- preprocessing -------------------------------------------------------------------------------
    def _fit_normalization(self, normalize, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-split means impute missing numbers; one-hot columns keep their 0/1 values."""
        self.fill = torch.nanmean(self.x_train, 0).nan_to_num(0.0)
        self.x_train = self._impute(self.x_train)
        mean, std = super()._fit_normalization(normalize, mean, std)
        one_hot = torch.tensor([is_one_hot for _, is_one_hot in self._encoded_columns()])
        return mean.masked_fill(one_hot, 0.0), std.masked_fill(one_hot, 1.0)

    def _impute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.isnan(), self.fill.to(x.device), x)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return super().transform(self._impute(x))

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "fill": self.fill,
            "categories": self.categories,
            "classes": self.classes,
            "target": self.target_name,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.fill, self.categories = state["fill"], state["categories"]
        self.classes, self.target_name = state["classes"], state["target"]

    # -- inputs for predict --------------------------------------------------------------------------
    def read_inputs(self, path: Path) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
        """New rows, encoded with the training run's columns, categories and statistics."""
        header, rows = read_csv(path)
        self._check_columns(header, list(self.categories), path)
        table = {name: [row[header.index(name)] for row in rows] for name in header}
        incomplete = sum(any(table[n][i] in self.na_values for n in self.categories) for i in range(len(rows)))
        if incomplete:
            log.info("%s: %d rows with missing values, filled with the training means", path.name, incomplete)
        x = self.encode(table)
        targets = table.get(self.target_name)
        if targets is None or any(v in self.na_values for v in targets):
            return [str(i) for i in range(len(rows))], x, None
        if self.classes is None:
            return [str(i) for i in range(len(rows))], x, torch.tensor([float(v) for v in targets])
        index = {label: i for i, label in enumerate(self.classes)}
        unknown = sorted({_label(v) for v in targets} - set(index))
        if unknown:
            raise DataError(f"{path}: target values {unknown} are not among the training classes {self.classes}")
        return [str(i) for i in range(len(rows))], x, torch.tensor([index[_label(v)] for v in targets])
