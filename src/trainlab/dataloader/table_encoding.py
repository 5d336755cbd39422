"""Table files read and table rows encoded into features: the cells of a user's CSV, TSV or Parquet file, of
``predict.py input=``'s file and of a request's JSON rows become the raw inputs of a table model (the
encoding is described in ``trainlab.dataloader.kinds.table``, with each column's plain-data form).

Tables are read with pandas, with pyarrow's multi-threaded CSV parser (``engine="pyarrow"``): pandas is
everywhere in data work, reads CSV, TSV and Parquet alike, and with pyarrow a 300,000-row CSV takes a
fraction of a second; encoding is vectorised per column (``pd.to_numeric``, category codes by
``pd.Index.get_indexer``, dates parsed once per distinct cell). A module of its own so that pandas (0.1-0.2 s
to import) is imported only where a table is read or encoded.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from trainlab.dataloader.kinds import Read
from trainlab.dataloader.kinds.table import TABLE_SUFFIXES, features_of
from trainlab.errors import DataError

if TYPE_CHECKING:
    from trainlab.dataloader.spec import InputSpec

log = logging.getLogger(__name__)

ROW_BLOCK = 8192  # rows of a table encoded at a time: with 35 features, about 1 MiB, which stays in the cache


def class_order(label: str) -> tuple[bool, float, str]:
    """Numeric class labels in numeric order, then text ones alphabetically."""
    try:
        return False, float(label), label
    except ValueError:
        return True, 0.0, label


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


DATE_PARTS = {  # what a date column's features may be (``dataset.date_parts``): numbers of a parsed date
    "year": lambda dates: dates.dt.year,
    "month": lambda dates: dates.dt.month,
    "day": lambda dates: dates.dt.day,
    "day_of_year": lambda dates: dates.dt.day_of_year,
    "weekday": lambda dates: dates.dt.day_of_week,  # Monday 0
    "hour": lambda dates: dates.dt.hour + dates.dt.minute / 60,
}


def parse_dates(spellings: Sequence[str], date_format: str) -> pd.Series:
    """Cells (``factorize_text``'s spellings) as UTC times, NaT where they do not parse with ``date_format``."""
    return pd.to_datetime(pd.Series(spellings, dtype=object), format=date_format, errors="coerce", utc=True)


def date_parts(dates: pd.Series, parts: Sequence[str]) -> np.ndarray:
    """(len(dates), len(parts)) float32: each date's ``parts`` (``DATE_PARTS``), NaN where it is NaT."""
    return np.stack([DATE_PARTS[part](dates).to_numpy(np.float32, na_value=np.nan) for part in parts], axis=1)


@dataclass
class Encoded:
    """What ``encode_features`` makes of rows: the raw ``features`` (N, F), which rows miss a value
    (``incomplete``), and per column the cells it does not know (``unseen``: a category not among the kept
    ones, a date that does not parse)."""

    features: torch.Tensor
    incomplete: np.ndarray
    unseen: dict[str, int]


def encode_features(
    rows: pd.DataFrame | Sequence[dict[str, Any]],
    columns: Sequence[dict[str, Any]],
    na_values: Iterable[str] | None = None,
    source: str = "the rows",
    target: str | None = None,
    factorized: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    max_bytes: float | None = None,
) -> Encoded:
    """Rows to the raw encoded features (N, F), as ``columns`` (``InputSpec.columns``) say: the one encoding
    of training and inference. The rows' columns may come in any order and include others. ``factorized``:
    ``factorize_text`` of category and date columns, where the caller has it already. ``max_bytes``: refuse
    (``DataError``, naming the widest column) a feature matrix larger than this, before allocating it.
    """
    frame = to_frame(rows)
    check_columns(frame, columns, source, target)
    widths = [len(features_of(column)) for column in columns]
    check_size(len(frame), columns, widths, max_bytes, source)
    # (N, F) filled in place: torch zeroes it on all cores, and number columns are written a block of rows at
    # a time that stays in the cache (3-5x faster than numpy's lazily zeroed pages and whole-column writes, or
    # than filling (F, N) and transposing it)
    features = torch.zeros(len(frame), sum(widths))
    out = features.numpy()
    numbers: list[tuple[int, np.ndarray]] = []
    incomplete = np.zeros(len(frame), dtype=bool)
    unseen: dict[str, int] = {}
    for column, start, width in zip(columns, np.cumsum([0, *widths[:-1]]), widths, strict=True):
        name, values = column["name"], frame[column["name"]]
        if column["type"] == "number":
            numbers.append((start, as_numbers(values, na_values, name)))
            missing = np.isnan(numbers[-1][1])
        else:  # categories and dates: each distinct cell encoded once, then broadcast to its rows by its code
            cells, spellings = (factorized or {}).get(name) or factorize_text(values, na_values)
            missing = cells < 0
            if column["type"] == "date":
                parts = date_parts(parse_dates(spellings, column["format"]), column["parts"])
                known = ~np.isnan(parts[:, 0])
                parts = np.vstack([parts, np.full(len(column["parts"]), np.nan, np.float32)])[cells]
                numbers += [(start + i, np.ascontiguousarray(parts[:, i])) for i in range(len(column["parts"]))]
            else:
                kept = pd.Index(column["categories"]).get_indexer(spellings)  # -1: not among them
                known = kept >= 0
                levels = np.where(known | ~column.get("other", False), kept, len(column["categories"]))
                levels = np.append(levels, width - 1 if column.get("missing") else -1)[cells]
                out[np.flatnonzero(levels >= 0), start + levels[levels >= 0]] = 1.0
            strange = ~np.append(known, True)[cells]  # present, but not a kept category or not a date
            if strange.any():
                unseen[name] = int(strange.sum())
            if column["type"] == "date":
                missing = missing | strange  # no date: its parts are imputed, its indicator set
        if column.get("indicator"):
            out[:, start + width - 1] = missing
        incomplete |= missing
    for block in range(0, len(frame), ROW_BLOCK):
        for start, values in numbers:
            out[block : block + ROW_BLOCK, start] = values[block : block + ROW_BLOCK]
    return Encoded(features, incomplete, unseen)


def check_size(
    rows: int, columns: Sequence[dict[str, Any]], widths: Sequence[int], max_bytes: float | None, source: str
) -> None:
    """A ``DataError`` where ``rows`` rows of ``widths`` features would take more than ``max_bytes`` (float32),
    naming the column that makes the most features."""
    size = rows * sum(widths) * 4
    if max_bytes is None or size <= max_bytes:
        return
    widest = max(range(len(columns)), key=widths.__getitem__)
    name = columns[widest]["name"]
    raise DataError(
        f"{source}: {rows:,} rows x {sum(widths):,} features take {size / 2**30:.2f} GiB, over the memory budget of "
        f"{max_bytes / 2**30:.2f} GiB (dataset.memory_budget); column {name!r} makes {widths[widest]:,} of them: "
        f"leave it out (dataset.exclude=[{name}]), lower dataset.max_categories, or use fewer rows"
    )


def encode_rows(
    spec: InputSpec, rows: pd.DataFrame | Sequence[dict[str, Any]], source: str = "the rows"
) -> torch.Tensor:
    """Table rows (a DataFrame, or JSON-like dicts as a server receives them) to raw inputs."""
    fields = spec.inputs
    return encode_features(rows, fields["columns"], fields["na_values"], source, fields["target"]).features


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
    encoded = encode_features(frame, fields["columns"], fields["na_values"], str(path), fields["target"])
    if encoded.incomplete.any():
        log.info("%s: %d rows with missing values, imputed as in training", path.name, encoded.incomplete.sum())
    for name, count in encoded.unseen.items():
        column = next(c for c in fields["columns"] if c["name"] == name)
        what = (
            "dates that do not parse" if column["type"] == "date" else "values not among the training categories"
        )
        went = "missing" if column["type"] == "date" else "(other)" if column.get("other") else "no category"
        log.warning("%s: column %r has %d %s (encoded as %s)", path.name, name, count, what, went)
    return Read([str(i) for i in range(len(frame))], encoded.features, encode_targets(spec, frame, str(path)))
