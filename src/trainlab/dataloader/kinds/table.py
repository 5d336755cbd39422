"""Table rows: the kind of input of scikit-learn's tables, the synthetic line and a user's CSV, TSV or
Parquet file (``dataset=csv``).

Raw inputs are encoded features (N, F) made from the rows' cells by ``encode_features``, the one encoding of
training, predict, serve and export; the model takes them imputed (the training mean) and standardised
(``Standardize``, which is also the preprocessing inside an exported ONNX graph). The spec's ``inputs`` hold
``input_shape`` ([features]), the per-feature ``mean`` and ``std``, the ``target`` column's name, the raw
``columns`` in encoding order, ``feature_names`` and ``na_values`` (cell texts that mean "missing"; None:
pandas' default set). Each column is plain data saying how its cells become features (``features_of``):

- ``{"name", "type": "number", "fill", "indicator"}``: the value (NaN where missing: the training mean
  ``fill`` is imputed), and with ``indicator`` a 0/1 feature ``<name> missing``;
- ``{"name", "type": "category", "categories": [...], "other", "missing"}``: one-hot over the kept
  categories, plus ``<name>=(other)`` for any other value where ``other`` (else none of them), and
  ``<name>=(missing)`` for a missing cell where ``missing`` (else none);
- ``{"name", "type": "date", "format", "parts": [...], "fill": [...], "indicator"}``: the cells parsed with
  ``format`` (``ISO8601`` or a strftime pattern), one number per part (``DATE_PARTS``: year, month,
  day_of_year...; NaN where missing or unparsable, imputed with ``fill``), and with ``indicator``
  ``<name> missing``.

0/1 features (levels, indicators) are never standardised. A request sends rows as JSON objects (``"rows"``).

Reading a table file and encoding its cells (pandas and pyarrow) is ``trainlab.dataloader.table_encoding``'s,
imported where rows are read: a run on other data, or a server of another kind, never imports pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainlab.dataloader.base import Normalization
from trainlab.dataloader.kinds import InputKind, Read
from trainlab.dataloader.spec import Standardize
from trainlab.dataloader.tensors import Splits, StandardizedData
from trainlab.errors import DataError
from trainlab.tasks import Kind, Task

TABLE_SUFFIXES = {".csv", ".tsv", ".parquet"}


class TableKind(InputKind):
    name = "table"
    description = "table rows"
    files = "a CSV, TSV or Parquet file"
    request_field = "rows"
    request_type = dict[str, Any]
    request_description = "table rows: {column: value}; null or absent: missing"

    def preprocessing(self) -> nn.Module:
        fields = self.spec.inputs
        return Standardize(torch.tensor(fields["mean"]), torch.tensor(fields["std"]), self.fill())

    def fill(self) -> torch.Tensor:
        """The value imputed for a missing raw value, per encoded feature (0/1 features are never missing:
        0)."""
        values: list[float] = []
        for column in self.spec.inputs["columns"]:
            fills = iter(np.atleast_1d(column.get("fill", [])).tolist())  # a number's one, a date's per part
            values += [next(fills) if numeric else 0.0 for _, numeric in features_of(column)]
        return torch.tensor(values)

    def example(self, n: int, seed: int = 0) -> torch.Tensor:
        """Rows around the training statistics (0/1 features 0 or 1), every other row missing its first
        number (filled inside the model)."""
        fields = self.spec.inputs
        generator = torch.Generator().manual_seed(seed)
        raw = torch.randn(n, *fields["input_shape"], generator=generator)
        raw = raw * torch.tensor(fields["std"]) + torch.tensor(fields["mean"])
        numeric = torch.tensor([numeric for column in fields["columns"] for _, numeric in features_of(column)])
        raw[:, ~numeric] = (raw[:, ~numeric] > 0).float()
        if numeric.any():
            raw[::2, int(numeric.nonzero()[0])] = float("nan")
        return raw

    def read(self, path: Path) -> Read:
        from trainlab.dataloader.table_encoding import read_rows

        return read_rows(self.spec, path)

    def request_schema(self) -> dict[str, Any]:
        """Rows of the model's columns: numbers (or null: missing) where a column held numbers, dates as text,
        any value in a category column (one not among its categories: "other"); every column in some row."""
        fields = self.spec.inputs
        value = {"type": ["string", "number", "boolean", "null"]}
        schemas = {
            "number": lambda column: {"type": ["number", "null"]},
            "date": lambda column: {"type": ["string", "null"], "description": f"a date ({column['format']})"},
            "category": lambda column: (
                value | {"description": f"categories: {', '.join(map(str, column['categories']))}"}
            ),
        }
        columns = {column["name"]: schemas[column["type"]](column) for column in fields["columns"]}
        if fields["target"]:
            columns[fields["target"]] = value | {"description": "the target: ignored"}
        return {
            "description": self.request_description,
            "items": {"type": "object", "properties": columns, "additionalProperties": False},
            "allOf": [{"contains": {"required": [column["name"]]}} for column in fields["columns"]],
        }

    def from_request(self, values: list[Any], max_pixels: int | None = None) -> torch.Tensor:
        """JSON rows, every key a column of the training table (the target's too, ignored); a number column
        takes JSON numbers or null (missing)."""
        fields = self.spec.inputs
        known = {column["name"] for column in fields["columns"]} | {fields["target"]}
        numbers = {column["name"] for column in fields["columns"] if column["type"] == "number"}
        for i, row in enumerate(values):
            nested = [name for name, value in row.items() if isinstance(value, dict | list)]
            if nested:
                raise DataError(f"rows[{i}][{nested[0]!r}] is not a number or text: a cell holds one value")
            unknown = sorted(set(row) - known)
            if unknown:
                raise DataError(
                    f"rows[{i}] has unknown column(s) {', '.join(unknown)}; the model's columns are "
                    f"{', '.join(c['name'] for c in fields['columns'])}"
                )
            text = [name for name in numbers & row.keys() if not is_number(row[name])]
            if text:
                raise DataError(
                    f"column {text[0]!r} held numbers in training, but row {i} has {row[text[0]]!r}; send a "
                    "number, or null for a missing value"
                )
        from trainlab.dataloader.table_encoding import encode_rows

        with np.errstate(over="ignore"):  # a number beyond float32's range is infinite: its answer refused
            return encode_rows(self.spec, values, "the rows")

    def summary(self) -> str:
        return f"{self.spec.inputs['input_shape'][0]} features from {len(self.spec.inputs['columns'])} columns"


class TableData(StandardizedData):
    """Rows of features (N, F): numbers standardised with training-split statistics, 0/1 features (one-hot
    levels, missing indicators) kept as they are, missing numbers (NaN) imputed with the training mean.

    Args:
        standardize_target: regression targets only: the model learns standardised targets; metrics and
            predictions stay in the data's units.
    """

    kind = TableKind
    target = "target"  # the target column's name in files of new rows
    na_values: list[str] | None = None  # cell texts that mean "missing" in such files; None: pandas' set

    def __init__(self, *, standardize_target: bool, **settings):
        super().__init__(**settings)
        self.standardize_target = standardize_target

    def fit_preprocessing(self, splits: Splits, normalization: Normalization | None) -> None:
        self.columns = splits.columns or [{"name": name, "type": "number"} for name in self.feature_names]
        # numpy for the mean and the imputation (its row reductions are fast); the std in torch, with no float64
        # copy of the split (a fresh 8-byte copy of a large table costs more than the reduction)
        x = self.x_train.numpy()
        missing = np.isnan(x)
        if missing.any():
            present = np.maximum((~missing).sum(0), 1)
            fill = np.where(missing, 0, x).sum(0, dtype=np.float64) / present  # the training mean (0: none there)
            x = np.where(missing, fill.astype(np.float32), x)
        else:
            fill = x.mean(0, dtype=np.float64)
        self.fill, self.x_train = torch.from_numpy(fill).float(), torch.from_numpy(x)
        features = self.input_shape[0]
        if self.normalize:  # the mean of the imputed values is the mean of the present ones: ``fill``
            self.mean = self.fill.clone()
            self.std = self.x_train.std(0).clamp_min(1e-6)  # torch's: no float64 copy of the split
        else:
            self.mean, self.std = torch.zeros(features), torch.ones(features)
        binary = torch.tensor([not numeric for column in self.columns for _, numeric in features_of(column)])
        self.mean, self.std = self.mean.masked_fill(binary, 0.0), self.std.masked_fill(binary, 1.0)

    def make_task(self, kind: Kind) -> Task:
        if kind != "regression":
            return super().make_task(kind)
        self.y_train, self.y_val, self.y_test = self.y_train.float(), self.y_val.float(), self.y_test.float()
        if self.standardize_target:
            y = self.y_train
            return Task(kind, target_mean=y.mean().item(), target_std=max(y.std().item(), 1e-6))
        return Task(kind)

    def input_fields(self) -> dict[str, Any]:
        fill = iter(self.fill.tolist())
        columns = []
        for column in self.columns:  # a number's fill is its feature's, a date's its parts'; 0/1 ones have none
            fills = [value for (_, numeric), value in zip(features_of(column), fill, strict=False) if numeric]
            if column["type"] == "number":
                column = {**column, "fill": fills[0]}
            elif column["type"] == "date":
                column = {**column, "fill": fills}
            columns.append(dict(column))
        return {
            "input_shape": list(self.input_shape),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "target": self.target,
            "columns": columns,
            "feature_names": self.feature_names,
            "na_values": self.na_values,
        }


def is_number(value: Any) -> bool:
    """A JSON number or null (a missing value): what a column of numbers takes in a request."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def features_of(column: dict[str, Any]) -> list[tuple[str, bool]]:
    """The features ``encode_features`` makes of a column (see the module's docstring): ``(name, numeric)``
    each, numeric ones imputed and standardised, the others 0/1."""
    name = column["name"]
    if column["type"] == "category":
        levels = [*column["categories"], *["(other)"] * column.get("other", False)]
        levels += ["(missing)"] * column.get("missing", False)
        return [(f"{name}={level}", False) for level in levels]
    numbers = [name] if column["type"] == "number" else [f"{name}.{part}" for part in column["parts"]]
    return [(number, True) for number in numbers] + [(f"{name} missing", False)] * column.get("indicator", False)


def encoded_names(columns: Sequence[dict[str, Any]]) -> list[str]:
    """The names of the features ``encode_features`` makes: ``age``, ``colour=red``, ``age missing``..."""
    return [name for column in columns for name, _ in features_of(column)]
