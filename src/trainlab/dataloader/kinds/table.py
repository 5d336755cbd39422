"""Table rows: the kind of input of scikit-learn's tables, the synthetic line and a user's CSV, TSV or
Parquet file (``dataset=csv``).

Raw inputs are encoded features (N, F): number columns as they are (NaN: missing), category columns one-hot
over their training categories; the model takes them imputed (the training mean) and standardised. The
spec's ``inputs`` hold ``input_shape`` ([features]), the per-feature ``mean`` and ``std``, the ``target``
column's name, the raw ``columns`` in encoding order (each ``{"name", "type": "number", "fill"}``, fill: the
training mean imputed for a missing value, or ``{"name", "type": "category", "categories": [...]}``),
``feature_names`` (``age``, ``colour=red``...) and ``na_values`` (cell texts that mean "missing"; None:
pandas' default set). A request sends rows as JSON objects (``"rows"``).

Tables are read with pandas, with pyarrow's multi-threaded CSV parser (``engine="pyarrow"``): pandas is
everywhere in data work, reads CSV, TSV and Parquet alike, and with pyarrow a 300,000-row CSV takes a
fraction of a second; encoding is vectorised per column (``pd.to_numeric``, category codes by
``pd.Index.get_indexer``), the one encoding of training and inference.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainlab.dataloader.base import Normalization
from trainlab.dataloader.kinds import InputKind, Read
from trainlab.dataloader.spec import Standardize
from trainlab.dataloader.tensors import Splits, StandardizedData
from trainlab.errors import DataError
from trainlab.tasks import Kind, Task

if TYPE_CHECKING:
    from trainlab.dataloader.spec import InputSpec

log = logging.getLogger(__name__)

TABLE_SUFFIXES = {".csv", ".tsv", ".parquet"}
ROW_BLOCK = 8192  # rows of a table encoded at a time: with 35 features, about 1 MiB, which stays in the cache


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
        """The value imputed for a missing raw value, per encoded feature (one-hot features are never
        missing: 0)."""
        return torch.tensor(
            [
                value
                for column in self.spec.inputs["columns"]
                for value in (
                    [column["fill"]] if column["type"] == "number" else [0.0] * len(column["categories"])
                )
            ]
        )

    def example(self, n: int, seed: int = 0) -> torch.Tensor:
        """Rows around the training statistics, every other row missing its first number (filled inside the
        model)."""
        fields = self.spec.inputs
        generator = torch.Generator().manual_seed(seed)
        raw = torch.randn(n, *fields["input_shape"], generator=generator)
        raw = raw * torch.tensor(fields["std"]) + torch.tensor(fields["mean"])
        numbers = [i for i, name in enumerate(fields["feature_names"] or []) if "=" not in name]
        if numbers:
            raw[::2, numbers[0]] = float("nan")
        return raw

    def read(self, path: Path) -> Read:
        return read_rows(self.spec, path)

    def request_schema(self) -> dict[str, Any]:
        """Rows of the model's columns: numbers (or null: missing) where a column held numbers, any value in a
        category column (one not among its categories: none of them); every column in some row."""
        fields = self.spec.inputs
        value = {"type": ["string", "number", "boolean", "null"]}
        columns = {
            column["name"]: {"type": ["number", "null"]}
            if column["type"] == "number"
            else value | {"description": f"categories: {', '.join(map(str, column['categories']))}"}
            for column in fields["columns"]
        }
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
        with np.errstate(over="ignore"):  # a number beyond float32's range is infinite: its answer refused
            return encode_rows(self.spec, values, "the rows")


class TableData(StandardizedData):
    """Rows of features (N, F): numbers standardised with training-split statistics, one-hot features kept
    0/1, missing numbers (NaN) imputed with the training mean.

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
        one_hot = torch.tensor(
            [c["type"] == "category" for c in self.columns for _ in c.get("categories", [None])]
        )
        self.mean, self.std = self.mean.masked_fill(one_hot, 0.0), self.std.masked_fill(one_hot, 1.0)

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
        for column in self.columns:  # the fill of a number column is its feature's; one-hot ones skip theirs
            fills = [next(fill) for _ in column.get("categories", [None])]
            columns.append({**column, "fill": fills[0]} if column["type"] == "number" else dict(column))
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


def read_table(path: Path, na_values: Sequence[str] | None = None) -> pd.DataFrame:
    """A CSV (``.tsv``: tab-separated) or Parquet file as a DataFrame; cells in ``na_values`` (None: pandas'
    default set) are missing. Every way it can fail is a one-line ``DataError``."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(f"{path} {what}; give a CSV, TSV or Parquet file")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            na = {"na_values": list(na_values), "keep_default_na": False} if na_values is not None else {}
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            frame = pd.read_csv(path, sep=sep, engine="pyarrow", **na)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; it needs a header line and at least one row") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error.reason}); save it as UTF-8") from None
    except (ValueError, OSError) as error:  # pyarrow's and pandas' parse errors are ValueErrors
        raise DataError(_parse_error(path, error)) from None
    if frame.empty:
        raise DataError(f"{path} has a header but no rows")
    # pyarrow keeps the cells of a column that is not UTF-8 as bytes, in an object column (text is str)
    for name in frame.columns[frame.dtypes.map(pd.api.types.is_object_dtype)]:
        present = frame[name].dropna()
        if len(present) and isinstance(present.iloc[0], bytes):
            raise DataError(f"{path} is not UTF-8 text (column {name!r}); save it as UTF-8")
    return frame


def _parse_error(path: Path, error: Exception) -> str:
    """The error of an unreadable table file as one line, with the line number of a ragged row."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "Expected" in message and "columns" in message and path.suffix.lower() != ".parquet":
        line, cells, header = _ragged_row(path)
        if line:
            return f"{path}, line {line}: {cells} cells, but the header names {header} columns"
    if "UTF8" in message or "UTF-8" in message:
        return f"{path} is not UTF-8 text ({message}); save it as UTF-8"
    return f"{path} is not a readable table ({message})"


def _ragged_row(path: Path) -> tuple[int, int, int]:
    """(line number, cells, header cells) of the first row whose length differs from the header's (pyarrow's
    message does not say where it is); zeros when none does."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        header = next(reader, [])
        for row in reader:
            if row and len(row) != len(header):
                return reader.line_num, len(row), len(header)
    return 0, 0, 0


def as_text(values: pd.Series, na_values: Iterable[str] | None = None) -> pd.Series:
    """Cells as text in one spelling (stripped; numbers as ``1``, not ``1.0``), missing ones NaN: how
    categories and class labels are compared, whether a file, a DataFrame or JSON rows hold them."""
    codes, spellings = factorize_text(values, na_values)
    return pd.Series(np.append(spellings, np.nan)[codes], index=values.index, dtype=object)


def factorize_text(values: pd.Series, na_values: Iterable[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, spellings)``: the distinct spellings of ``as_text`` and each cell's index among them, -1 where
    missing. Each distinct value is spelled once (``pd.factorize``), so a column of 300,000 rows but a few
    categories costs a hash of the column, not 300,000 number parses and strings."""
    codes, distinct = pd.factorize(values)  # NaN, None: -1
    spelled = _spell(pd.Series(distinct, dtype=object), na_values)
    merged, spellings = pd.factorize(spelled)  # "1" and 1.0 are one spelling; a spelled-missing one is -1
    return np.append(merged, -1)[codes], np.asarray(spellings, dtype=object)


def _spell(values: pd.Series, na_values: Iterable[str] | None) -> pd.Series:
    text = values.astype(str).str.strip()
    missing = values.isna() | (text.isin(list(na_values)) if na_values is not None else False)
    numbers = pd.to_numeric(text.where(~missing), errors="coerce")
    is_number = numbers.notna()
    integral = is_number & (numbers % 1 == 0)
    text = text.mask(is_number, numbers.astype(str))
    text = text.mask(integral, numbers[integral].astype("int64").astype(str))
    return text.mask(missing)


def all_numbers(spellings: Sequence[str]) -> bool:
    """Whether every one of the distinct spellings ``factorize_text`` makes is a number."""
    return bool(pd.to_numeric(pd.Series(spellings, dtype=object), errors="coerce").notna().all())


def as_numbers(values: pd.Series, na_values: Iterable[str] | None, name: str) -> np.ndarray:
    """A numeric column as floats, missing values NaN; text that is not a number is an error."""
    if isinstance(values.dtype, np.dtype) and values.dtype.kind == "f":
        return values.to_numpy()  # NaN already marks the missing ones: no copy
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.to_numpy(np.float32, na_value=np.nan)
    text = values.astype(str).str.strip()
    missing = values.isna() | (text.isin(list(na_values)) if na_values is not None else False)
    numbers = pd.to_numeric(text.where(~missing), errors="coerce")
    bad = numbers.isna() & ~missing
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"column {name!r} held numbers in training, but row {row} has {values.iloc[row]!r}")
    return numbers.to_numpy(np.float32, na_value=np.nan)


def to_frame(rows: pd.DataFrame | Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame: a DataFrame as it is, or JSON-like dicts, keys in any order: a key that some rows
    lack is a missing value there (None too); a column that no row has is missing, as from a file."""
    return rows if isinstance(rows, pd.DataFrame) else pd.DataFrame.from_records(list(rows))


def encode_features(
    rows: pd.DataFrame | Sequence[dict[str, Any]],
    columns: Sequence[dict[str, Any]],
    na_values: Iterable[str] | None = None,
    source: str = "the rows",
    target: str | None = None,
    factorized: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Rows to the raw encoded feature matrix (N, F) and which rows miss a value.

    ``columns`` as in ``InputSpec.columns``: number columns as they are (missing: NaN, which normalisation
    imputes), category columns one-hot over their training categories (missing or unseen: all zeros).
    The rows' columns may come in any order and include others. The one encoding of training and inference.
    ``factorized``: ``factorize_text`` of category columns, where the caller has it already.
    """
    frame = to_frame(rows)
    check_columns(frame, columns, source, target)
    widths = [len(column.get("categories", [None])) for column in columns]
    # (N, F) filled in place: torch zeroes it on all cores, and number columns are written a block of rows at
    # a time that stays in the cache (3-5x faster than numpy's lazily zeroed pages and whole-column writes, or
    # than filling (F, N) and transposing it)
    features = torch.zeros(len(frame), sum(widths))
    out = features.numpy()
    numbers: list[tuple[int, np.ndarray]] = []
    incomplete = np.zeros(len(frame), dtype=bool)
    for column, start in zip(columns, np.cumsum([0, *widths[:-1]]), strict=True):
        values = frame[column["name"]]
        if column["type"] == "number":
            numbers.append((start, as_numbers(values, na_values, column["name"])))
            incomplete |= np.isnan(numbers[-1][1])
        else:
            cells, spellings = (factorized or {}).get(column["name"]) or factorize_text(values, na_values)
            incomplete |= cells < 0
            codes = np.append(pd.Index(column["categories"]).get_indexer(spellings), -1)[
                cells
            ]  # missing, unseen: -1
            known = codes >= 0
            out[np.flatnonzero(known), start + codes[known]] = 1.0
    for block in range(0, len(frame), ROW_BLOCK):
        for start, values in numbers:
            out[block : block + ROW_BLOCK, start] = values[block : block + ROW_BLOCK]
    return features, incomplete


def encode_rows(
    spec: InputSpec, rows: pd.DataFrame | Sequence[dict[str, Any]], source: str = "the rows"
) -> torch.Tensor:
    """Table rows (a DataFrame, or JSON-like dicts as a server receives them) to raw inputs."""
    fields = spec.inputs
    return encode_features(rows, fields["columns"], fields["na_values"], source, fields["target"])[0]


def encoded_names(columns: Sequence[dict[str, Any]]) -> list[str]:
    """The names of the features ``encode_features`` makes: ``age``, and ``colour=red`` for one-hot ones."""
    return [
        name
        for column in columns
        for name in (
            [column["name"]]
            if column["type"] == "number"
            else [f"{column['name']}={category}" for category in column["categories"]]
        )
    ]


def check_columns(frame: pd.DataFrame, columns: Sequence[dict[str, Any]], source: str, target: str | None) -> None:
    """Every column the encoding reads is in ``frame``; a file whose columns bear none of the feature names
    of an all-number table is read by position, if the number of columns (but ``target``) fits: they are
    renamed in place."""
    names = [c["name"] for c in columns]
    absent = [name for name in names if name not in frame.columns]
    if not absent:
        return
    if len(absent) < len(names) or any(c["type"] != "number" for c in columns):
        raise DataError(
            f"{source} lacks the feature column(s) {', '.join(absent)}; its columns are {', '.join(map(str, frame.columns))}"
        )
    others = [c for c in frame.columns if c != target]
    if len(others) != len(names):
        raise DataError(
            f"{source} has {len(others)} feature columns ({', '.join(map(str, others))}) but the model expects "
            f"{len(names)} ({', '.join(names)})"
        )
    frame.rename(columns=dict(zip(others, names, strict=True)), inplace=True)


def encode_targets(spec: InputSpec, frame: pd.DataFrame, source: str) -> torch.Tensor | None:
    """The target column of new rows as class indices or values; None where it is absent or incomplete.
    Class labels are the training classes' names, or their indices where the classes have other names."""
    target, na_values = spec.inputs["target"], spec.inputs["na_values"]
    if target not in frame.columns:
        return None
    labels = as_text(frame[target], na_values)
    if labels.isna().any():
        return None
    if spec.task == "regression":
        return torch.from_numpy(pd.to_numeric(labels).to_numpy(np.float32))
    names = spec.class_names
    index = pd.Index(names).get_indexer(labels)
    if (index < 0).any():
        numbers = pd.to_numeric(labels, errors="coerce")
        if numbers.isin(range(len(names))).all() and not labels.isin(names).any():  # indices, as sklearn's
            return torch.tensor(numbers.to_numpy(np.int64))
        unknown = sorted(set(labels[index < 0]))
        raise DataError(f"{source}: target values {unknown} are not among the training classes {names}")
    return torch.from_numpy(index.astype(np.int64))


def read_rows(spec: InputSpec, path: Path) -> Read:
    """New rows from a table file, encoded with the training run's columns, categories and statistics."""
    if path.suffix.lower() not in TABLE_SUFFIXES and path.is_file():
        raise DataError(f"{path} is not a CSV, TSV or Parquet file; this model predicts from table rows")
    fields = spec.inputs
    frame = read_table(path, fields["na_values"])
    x, incomplete = encode_features(frame, fields["columns"], fields["na_values"], str(path), fields["target"])
    if incomplete.any():
        log.info("%s: %d rows with missing values, filled with the training means", path.name, incomplete.sum())
    return Read([str(i) for i in range(len(frame))], x, encode_targets(spec, frame, str(path)))
