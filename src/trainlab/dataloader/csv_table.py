"""A user's own table as a data set (``dataset=csv``): a CSV, TSV or Parquet file, with only its path and
target column given.

Each column gets a role, inferred from its cells, logged in a column report (``columns.md`` in the run dir
and TensorBoard's Text tab) and overridable:

- **left out**: the target; an unnamed column of distinct integers (the row numbers of an R or pandas
  export, which leak a sorted file's order); text with a distinct value in (nearly) every row (an identifier,
  a name or free text: free text is the text kind's, ``dataset=text``); a column with one value in every
  training row; the columns of ``dataset.exclude`` (and those not in ``dataset.features``, where it is set);
- **number**: standardised; a missing value is the training mean plus a missing-indicator feature;
- **date**: text that parses as dates (ISO 8601, or one format pandas recognises): its ``date_parts``
  (year, month, day of year, weekday...) as numbers, missing ones as numbers' are;
- **category**: other text (and the columns of ``dataset.categorical``): one-hot over its ``max_categories``
  most frequent values seen at least ``min_frequency`` times in training, plus "(other)" for the rest and
  "(missing)" for a missing cell.

``dataset.features`` keeps the columns it names whatever they look like; ``dataset.dates`` parses columns as
dates. Only rows without a target are dropped (``missing: drop`` also drops rows with a missing feature); a
WARNING names the column whenever more than 10% of the rows would go. Roles are inferred on the whole file;
what is fitted (the categories kept, the means, whether a column needs its missing indicator) on the training
split alone.

The file is read with pandas and pyarrow's CSV parser (``table_encoding.read_table``) and encoded by the code
that encodes new rows at inference (``table_encoding.encode_features``). Everything fitted is part of the data
set's ``InputSpec``, which the checkpoint stores: ``predict.py input=rows.csv``, a server and an ONNX export
encode new rows exactly as the training rows were encoded, without the training file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import to_absolute_path
from pandas.tseries.api import guess_datetime_format

from trainlab.dataloader.kinds.table import TableData, encoded_names, features_of
from trainlab.dataloader.table_encoding import (
    DATE_PARTS,
    all_numbers,
    as_text,
    class_order,
    encode_features,
    factorize_text,
    parse_dates,
    read_table,
)
from trainlab.dataloader.tensors import Splits, available_memory, check_memory_budget, split_samples
from trainlab.errors import DataError
from trainlab.tasks import Kind

log = logging.getLogger(__name__)

ID_SHARE = 0.9  # text with at least this many distinct values per present cell: an identifier or free text
WARN_SHARE = 0.1  # rows dropped for one reason beyond this share of the file: a WARNING
COPIES = 3  # the encoded table, its splits' copies and the imputed training split: what the memory check counts
UNNAMED = re.compile(r"(Unnamed: \d+)?")  # pandas' name of a column with an empty header cell
ISO_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}([ T]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?")
DATE_SAMPLE = 200  # distinct cells a column's date format is guessed on


def infer_task(labels: Sequence[str] | pd.Series, max_classes: int) -> Kind:
    """Text, or at most ``max_classes`` distinct integers: classification (binary with 2); else regression."""
    distinct = pd.Series(as_text(pd.Series(labels)).dropna().unique(), dtype=object)
    numbers = pd.to_numeric(distinct, errors="coerce")
    if numbers.isna().any() or ((numbers % 1 == 0).all() and len(distinct) <= max_classes):
        return "binary" if len(distinct) == 2 else "multiclass"
    return "regression"


def date_format(spellings: np.ndarray) -> str | None:
    """The format every one of a text column's distinct cells parses with as a date (with a year, a month and
    a day): ``ISO8601`` or the strftime pattern pandas guesses from the first; None where they are no dates."""
    sample = [str(s) for s in spellings[:: max(1, len(spellings) // DATE_SAMPLE)]]
    if all(ISO_DATE.fullmatch(s) for s in sample):
        candidate: str | None = "ISO8601"
    else:
        candidate = guess_datetime_format(sample[0]) if sample else None
        if not candidate or not all(any(d in candidate for d in group) for group in ("Yy", "mbB", "d")):
            return None
    return candidate if parse_dates(spellings, candidate).notna().all() else None


def _share(count: int, total: int) -> str:
    return f"{count / max(total, 1):.0%}"


@dataclass
class Column:
    """One column of the file: what it looks like, its role, and (features) how it is encoded."""

    name: str
    type: str  # number, text, date, boolean
    missing: int  # cells missing among the labelled rows
    distinct: int
    role: str = "feature"  # or "target", or "left out: <why>"
    kind: str = "number"  # the encoding: number, category, date
    factorized: tuple[np.ndarray, np.ndarray] | None = None  # text's factorize_text
    date_format: str | None = None
    encoding: dict[str, Any] = field(default_factory=dict)  # the column as the input spec holds it

    def leave_out(self, why: str) -> None:
        self.role = f"left out: {why}"


class CSVTable(TableData):
    """One row per sample, a header line, one target column; column roles as the module's docstring says.

    Args:
        path: the file: ``.csv``, ``.tsv`` (tab-separated) or ``.parquet``.
        target: the target column's name.
        task: ``multiclass``, ``binary`` or ``regression``; null: inferred from the target column (text, or
            at most ``max_classes`` distinct integers: classification, binary with 2 classes; else regression).
        features: the feature columns, kept whatever they look like; null: every column but the target,
            roles inferred.
        exclude: columns left out.
        categorical: columns one-hot encoded whatever they hold (numbers, identifiers...).
        dates: columns parsed as dates (a format pandas recognises), besides those recognised.
        date_parts: the numbers a date column makes (``DATE_PARTS``: year, month, day, day_of_year, weekday,
            hour).
        max_categories: the most frequent values a category column keeps (the others: "(other)").
        min_frequency: a value is kept only if it is in at least this many training rows.
        missing: ``impute`` missing features (numbers: the training mean plus an indicator; categories: a
            "(missing)" value), or ``drop`` the rows that have one. Rows without a target are always dropped.
        na_values: cell texts that mean "missing".
        max_classes: at most this many distinct integer targets make an inferred classification task.
        memory_budget: the share of the available memory the encoded table may take (an encoding that would
            take more is refused before it is made, naming the column that makes it large).
    """

    def __init__(
        self,
        *,
        path: str | None,
        target: str | None,
        task: Kind | None,
        features: Sequence[str] | None,
        exclude: Sequence[str],
        categorical: Sequence[str],
        dates: Sequence[str],
        date_parts: Sequence[str],
        max_categories: int,
        min_frequency: int,
        missing: str,
        na_values: Sequence[str],
        max_classes: int,
        memory_budget: float,
        **settings,
    ):
        if path is None:
            raise DataError("dataset=csv needs the file: add dataset.path=<your.csv> dataset.target=<column>")
        if missing not in ("drop", "impute"):
            raise DataError(f"dataset.missing must be drop or impute, got {missing!r}")
        unknown = [part for part in date_parts if part not in DATE_PARTS]
        if unknown or not date_parts:
            raise DataError(
                f"dataset.date_parts must name some of {', '.join(DATE_PARTS)}; got {list(date_parts)}"
            )
        for name, value in (("max_categories", max_categories), ("min_frequency", min_frequency)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"dataset.{name} must be a positive integer, got {value}")
        check_memory_budget(memory_budget)
        super().__init__(task=task, **settings)
        self.path, self.target = Path(to_absolute_path(path)), target
        self.features = list(features) if features else None
        self.exclude, self.categorical, self.dates = list(exclude), list(categorical), list(dates)
        self.date_parts, self.max_categories, self.min_frequency = list(date_parts), max_categories, min_frequency
        self.missing, self.na_values, self.max_classes = missing, list(na_values), max_classes
        self.memory_budget = memory_budget
        self.report = ""

    def load(self) -> Splits:
        log.info("reading %s", self.path)  # with the log line of the built model: how long the data took
        frame = read_table(self.path, self.na_values)
        self._check_names(frame)
        rows = len(frame)
        labels, spellings = factorize_text(frame[self.target], self.na_values)  # labels: codes into spellings
        frame, labels = self._drop(frame, labels, labels >= 0, f"no value of the target {self.target!r}", rows)
        columns = [self._column(name, frame[name]) for name in frame.columns if name != self.target]
        features = [c for c in columns if c.role == "feature"]
        if self.missing == "drop":
            cells = {c.name: self._missing_cells(c, frame[c.name]) for c in features}
            incomplete = np.logical_or.reduce([*cells.values(), np.zeros(len(frame), dtype=bool)])
            counts = ", ".join(f"{name} {int(m.sum())}" for name, m in cells.items() if m.any())
            why = (
                f"a missing feature (dataset.missing=drop; missing in {counts}; dataset.missing=impute keeps them)"
            )
            frame, labels = self._drop(frame, labels, ~incomplete, why, rows)
            features = [self._column(c.name, frame[c.name]) for c in features]  # codes of the rows kept
        used = np.bincount(labels, minlength=len(spellings)) > 0  # dropped rows may have taken some labels
        labels, spellings = (np.cumsum(used) - 1)[labels], spellings[used]
        kind = self.task_kind or infer_task(spellings, self.max_classes)
        y, classes = self._targets(labels, spellings, kind)
        train = split_samples(y, self.seed, self.test_fraction, self.val_fraction, self.cv)["train"].numpy()
        for column in features:
            self._fit(column, frame[column.name], train)
        features = [c for c in features if c.role == "feature"]
        encoded = encode_features(
            frame,
            [c.encoding for c in features],
            self.na_values,
            str(self.path),
            factorized={c.name: c.factorized for c in features if c.factorized is not None},
            max_bytes=self.memory_budget * available_memory() / COPIES,
        )
        self.report = self._report(columns, features, rows, len(frame), kind, classes)
        log.info("%s", self.report)
        specs = [c.encoding for c in features]
        return Splits(
            encoded.features, y, classes=classes, feature_names=encoded_names(specs), columns=specs, kind=kind
        )

    def reports(self) -> dict[str, str]:
        return {"columns.md": self.report}

    # -- roles ---------------------------------------------------------------------------------------
    def _check_names(self, frame: pd.DataFrame) -> None:
        """The target and every column the settings name are columns of the file."""
        names = ", ".join(map(str, frame.columns))
        if self.target is None:
            raise DataError(
                f"dataset=csv needs the column to predict: add dataset.target=<column>, one of {names}"
            )
        if self.target not in frame.columns:
            raise DataError(
                f"dataset.target={self.target} is not a column of {self.path}; set it to one of {names}"
            )
        listed = [*(self.features or []), *self.exclude, *self.categorical, *self.dates]
        absent = list(dict.fromkeys(name for name in listed if name not in frame.columns))
        if absent:
            raise DataError(f"{self.path} has no column {', '.join(map(str, absent))}; its columns are {names}")

    def _column(self, name: str, values: pd.Series) -> Column:
        """A column's type and role, from its cells (labelled rows) and the settings."""
        missing = int(values.isna().sum())
        if pd.api.types.is_bool_dtype(values):
            type_ = "boolean"
        elif pd.api.types.is_numeric_dtype(values):
            type_ = "number"
        elif pd.api.types.is_datetime64_any_dtype(values):
            type_ = "date"
        else:
            type_ = "text"
        column = Column(name, type_, missing, 0)
        if type_ != "number" or name in self.categorical or name in self.dates:
            column.factorized = factorize_text(values, self.na_values)
            column.missing = int((column.factorized[0] < 0).sum())
            column.distinct = len(column.factorized[1])
        else:
            column.distinct = int(values.nunique())
        listed = self.features is not None and name in self.features
        if name in self.exclude:
            column.leave_out("dataset.exclude")
        elif self.features is not None and not listed:
            column.leave_out("not in dataset.features")
        elif name in self.categorical:
            column.kind = "category"
        elif name in self.dates or type_ == "date":
            column.kind, column.date_format = "date", date_format(column.factorized[1])
            if column.date_format is None:
                example = column.factorized[1][0] if column.distinct else ""
                raise DataError(
                    f"dataset.dates names {name!r}, but its cells are no dates pandas can read (e.g. {example!r}); "
                    "give ISO 8601 dates (2024-05-31) or leave it out of dataset.dates"
                )
        elif type_ == "number":
            integers = pd.api.types.is_integer_dtype(values)
            if UNNAMED.fullmatch(str(name)) and integers and column.distinct == len(values) and not listed:
                column.leave_out("row numbers (an unnamed column of distinct integers)")
        elif all_numbers(column.factorized[1]):
            column.kind = "number"
        else:
            column.date_format = date_format(column.factorized[1]) if type_ == "text" else None
            column.kind = "date" if column.date_format else "category"
            present = len(values) - column.missing
            if column.kind == "category" and column.distinct >= ID_SHARE * present > 1 and not listed:
                column.leave_out(
                    f"an identifier or free text ({column.distinct:,} distinct values in {present:,} rows; "
                    f"free text: dataset=text; one-hot anyway: dataset.categorical=[{name}])"
                )
        return column

    def _missing_cells(self, column: Column, values: pd.Series) -> np.ndarray:
        if column.factorized is not None:
            return column.factorized[0] < 0
        return values.isna().to_numpy()

    def _drop(
        self, frame: pd.DataFrame, labels: np.ndarray, keep: np.ndarray, why: str, rows: int
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """The rows of ``frame`` (and their ``labels``) that ``keep`` marks; those dropped are logged, with a
        WARNING beyond ``WARN_SHARE`` of the file's ``rows``."""
        dropped = int((~keep).sum())
        if not dropped:
            return frame, labels
        level = logging.WARNING if dropped > WARN_SHARE * rows else logging.INFO
        log.log(
            level,
            "%s: dropped %d of %d rows (%s) with %s",
            self.path.name,
            dropped,
            rows,
            _share(dropped, rows),
            why,
        )
        if dropped == len(frame):
            raise DataError(f"{self.path}: no rows left: every row has {why}")
        return frame[keep].reset_index(drop=True), labels[keep]

    # -- fitted on the training rows -------------------------------------------------------------------
    def _fit(self, column: Column, values: pd.Series, train: np.ndarray) -> None:
        """``column.encoding`` from the training rows ``train``; a column with one value in all of them (and no
        missing one) is left out."""
        missing = self._missing_cells(column, values)[train]
        spec: dict[str, Any] = {"name": column.name, "type": column.kind}
        if column.kind == "category":
            codes = column.factorized[0][train]
            counts = np.bincount(codes[codes >= 0], minlength=column.distinct)
            order = np.lexsort((column.factorized[1].astype(str), -counts))[: self.max_categories]
            kept = order[counts[order] >= self.min_frequency]
            spec["categories"] = sorted(str(s) for s in column.factorized[1][kept])
            spec["other"] = bool(counts.sum() > counts[kept].sum())
            spec["missing"] = bool(missing.any())
            distinct = int((counts > 0).sum())
        else:
            if column.kind == "date":
                spec |= {"format": column.date_format, "parts": self.date_parts}
                codes = column.factorized[0][train]
                distinct = len(np.unique(codes[codes >= 0]))
            else:
                distinct = int(values.iloc[train].nunique())
            spec["indicator"] = bool(missing.any())
        if distinct <= 1 and not missing.any() and (self.features is None or column.name not in self.features):
            column.leave_out("one value in every training row")
        elif column.kind == "category" and not spec["categories"] and not spec["missing"]:
            column.leave_out(f"no value in {self.min_frequency} training rows (dataset.min_frequency)")
        column.encoding = spec

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
        classes = sorted(spellings, key=class_order)
        if len(classes) < 2:
            raise DataError(f"target column {self.target!r} has a single value {classes}; nothing to classify")
        return torch.from_numpy(pd.Index(classes).get_indexer(spellings).astype(np.int64)[labels]), classes

    # -- the report ----------------------------------------------------------------------------------
    def _report(
        self,
        columns: list[Column],
        features: list[Column],
        rows: int,
        kept: int,
        kind: Kind,
        classes: list[str] | None,
    ) -> str:
        """The column report (Markdown): per column its role, type, missing share, distinct values, encoding
        and the features it makes."""
        encoded = {c.name: c for c in features}
        width = sum(len(features_of(c.encoding)) for c in features)
        lines = [
            f"**{self.path.name}**: {rows:,} rows, {kept:,} kept; {len(columns) + 1} columns, {len(features)} "
            f"used as features, which make {width:,} features",
            "",
            "| column | role | type | missing | distinct | encoding | features |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        target = f"{kind}: {len(classes)} classes" if classes else f"{kind}: values"
        lines.append(f"| {self.target} | target | | | | {target} | |")
        for column in columns:
            column = encoded.get(column.name, column)
            made = len(features_of(column.encoding)) if column.name in encoded else 0
            description = _encoding(column.encoding) if column.name in encoded else ""
            role = column.role.replace("|", "/")
            missing = _share(column.missing, kept if column.name in encoded else rows)
            lines.append(
                f"| {column.name} | {role} | {column.type} | {missing} | {column.distinct:,} | {description} | {made} |"
            )
        return "\n".join(lines) + "\n"


def _encoding(spec: dict[str, Any]) -> str:
    """A column's encoding in words, for the report."""
    if spec["type"] == "category":
        extra = [label for label, flag in (("(other)", spec["other"]), ("(missing)", spec["missing"])) if flag]
        kept = len(spec["categories"])
        return f"one-hot: {kept} value{'s' * (kept != 1)}" + "".join(f" + {e}" for e in extra)
    imputed = "; missing: training mean + indicator" if spec["indicator"] else ""
    if spec["type"] == "date":
        return f"date ({spec['format']}): {', '.join(spec['parts'])}{imputed}"
    return f"standardised{imputed}"
