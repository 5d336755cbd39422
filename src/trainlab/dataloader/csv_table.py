"""A user's own table as a data set (``dataset=csv``): a CSV, TSV or Parquet file, numeric columns
standardised, text columns one-hot encoded, missing values dropped or imputed, the task read off the target
column.

The file is read with pandas and pyarrow's CSV parser (``kinds.table.read_table``: pandas is everywhere in data
work, and pyarrow parses in parallel, a 300,000-row CSV in a fraction of a second) and encoded column by
column, vectorised (``kinds.table.encode_features``), by the same code that encodes new rows at inference.
Everything fitted (columns, categories, training means and standard deviations, class names) is part of the
data set's ``InputSpec``, which the checkpoint stores: ``predict.py input=rows.csv`` and a server encode new
rows exactly as the training rows were encoded, without the training file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import to_absolute_path

from trainlab.dataloader.kinds.table import (
    TableData,
    all_numbers,
    as_text,
    encode_features,
    encoded_names,
    factorize_text,
    read_table,
)
from trainlab.dataloader.tensors import Splits
from trainlab.errors import DataError
from trainlab.tasks import Kind

log = logging.getLogger(__name__)


def infer_task(labels: Sequence[str] | pd.Series, max_classes: int) -> Kind:
    """Text, or at most ``max_classes`` distinct integers: classification (binary with 2); else regression."""
    distinct = pd.Series(as_text(pd.Series(labels)).dropna().unique(), dtype=object)
    numbers = pd.to_numeric(distinct, errors="coerce")
    if numbers.isna().any() or ((numbers % 1 == 0).all() and len(distinct) <= max_classes):
        return "binary" if len(distinct) == 2 else "multiclass"
    return "regression"


def _class_order(label: str) -> tuple[bool, float, str]:
    """Numeric class labels in numeric order, then text ones alphabetically."""
    try:
        return False, float(label), label
    except ValueError:
        return True, 0.0, label


class CSVTable(TableData):
    """One row per sample, a header line, one target column.

    Args:
        path: the file: ``.csv``, ``.tsv`` (tab-separated) or ``.parquet``.
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
        *,
        path: str | None,
        target: str | None,
        task: Kind | None,
        features: Sequence[str] | None,
        categorical: Sequence[str],
        missing: str,
        na_values: Sequence[str],
        max_classes: int,
        **settings,
    ):
        if path is None or target is None:
            raise DataError("dataset=csv needs the file: add dataset.path=<your.csv> dataset.target=<column>")
        if missing not in ("drop", "impute"):
            raise DataError(f"dataset.missing must be drop or impute, got {missing!r}")
        super().__init__(task=task, **settings)
        self.path, self.target = Path(to_absolute_path(path)), target
        self.features, self.categorical = list(features) if features else None, list(categorical)
        self.missing, self.na_values, self.max_classes = missing, list(na_values), max_classes

    def load(self) -> Splits:
        log.info("reading %s", self.path)  # with the log line of the built model: how long the data took
        frame = read_table(self.path, self.na_values)
        if self.target not in frame.columns:
            raise DataError(
                f"dataset.target={self.target} is not a column of {self.path}; set it to one of "
                f"{', '.join(map(str, frame.columns))}"
            )
        labels, spellings = factorize_text(frame[self.target], self.na_values)  # labels: codes into spellings
        labelled = labels >= 0
        if not labelled.all():
            log.info("%s: dropped %d rows without a target value", self.path.name, (~labelled).sum())
            frame, labels = frame[labelled], labels[labelled]
        features = self.features or [c for c in frame.columns if c != self.target]
        absent = [c for c in features if c not in frame.columns]
        if absent:
            raise DataError(
                f"{self.path} has no column {', '.join(absent)}; its columns are {', '.join(map(str, frame.columns))}"
            )
        # category names (not statistics) come from the whole file, so a category first seen in val or test
        # still has its column; means and standard deviations come from the training split alone.
        factorized: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # text columns: spelled once, encoded with it
        columns = [self._column(name, frame[name], factorized) for name in features]
        x, incomplete = encode_features(frame, columns, self.na_values, str(self.path), factorized=factorized)
        x, labels = self._handle_missing(x, labels, incomplete, len(frame))
        used = np.bincount(labels, minlength=len(spellings)) > 0  # dropped rows may have taken some labels
        labels, spellings = (np.cumsum(used) - 1)[labels], spellings[used]
        kind = self.task_kind or infer_task(spellings, self.max_classes)
        y, classes = self._targets(labels, spellings, kind)
        return Splits(x, y, classes=classes, feature_names=encoded_names(columns), columns=columns, kind=kind)

    def _column(
        self, name: str, values: pd.Series, factorized: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> dict[str, Any]:
        """A feature's encoding: a number column, or a category column with the file's categories (a text
        column, or one named in ``categorical``), whose ``factorize_text`` goes into ``factorized``."""
        if name in self.categorical or not pd.api.types.is_numeric_dtype(values) or values.dtype == bool:
            codes, spellings = factorize_text(values, self.na_values)
            if name in self.categorical or not all_numbers(spellings):
                factorized[name] = codes, spellings
                return {"name": name, "type": "category", "categories": sorted(spellings)}
        return {"name": name, "type": "number"}

    def _handle_missing(self, x: torch.Tensor, labels: np.ndarray, incomplete: np.ndarray, rows: int):
        if not incomplete.any():
            return x, labels
        if self.missing == "impute":
            log.info(
                "%s: imputed missing values in %d of %d rows (dataset.missing=impute)",
                self.path.name,
                incomplete.sum(),
                rows,
            )
            return x, labels
        log.info(
            "%s: dropped %d of %d rows with missing values (dataset.missing=drop)",
            self.path.name,
            incomplete.sum(),
            rows,
        )
        if incomplete.all():
            raise DataError(
                f"{self.path}: no rows left after dropping those with missing values; try dataset.missing=impute"
            )
        complete = ~incomplete
        return x[torch.from_numpy(complete)], labels[complete]

    def _targets(
        self, labels: np.ndarray, spellings: np.ndarray, kind: Kind
    ) -> tuple[torch.Tensor, list[str] | None]:
        """Class indices or values of the rows' ``labels`` (codes into the distinct ``spellings``), and the
        classes' names."""
        if kind == "regression":
            numbers = pd.to_numeric(pd.Series(spellings, dtype=object), errors="coerce")
            if numbers.isna().any():
                raise DataError(
                    f"target column {self.target!r} holds text, but dataset.task=regression needs numbers"
                )
            return torch.from_numpy(numbers.to_numpy(np.float32)[labels]), None
        classes = sorted(spellings, key=_class_order)
        if len(classes) < 2:
            raise DataError(f"target column {self.target!r} has a single value {classes}; nothing to classify")
        return torch.from_numpy(pd.Index(classes).get_indexer(spellings).astype(np.int64)[labels]), classes
