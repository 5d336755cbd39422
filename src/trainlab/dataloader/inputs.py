"""Reading inputs from an ``InputSpec`` alone: image files resized as training did, and table rows (a file,
a DataFrame or JSON-like dicts) encoded as the training rows were. ``read_inputs(spec, path)`` is what
``predict.py input=...`` calls; the training data sets use the same functions, so that there is one reader
and one encoding.

Tables are read with pandas, with pyarrow's multi-threaded CSV parser (``engine="pyarrow"``): pandas is
everywhere in data work, reads CSV, TSV and Parquet alike, and with pyarrow a 300,000-row CSV takes a
fraction of a second; encoding is vectorised per column (``pd.to_numeric``, category codes by ``pd.Index.get_indexer``).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch

from trainlab.dataloader.spec import InputSpec
from trainlab.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TABLE_SUFFIXES = {".csv", ".tsv", ".parquet"}
ROW_BLOCK = 8192  # rows of a table encoded at a time: with 35 features, about 1 MiB, which stays in the cache
Inputs = tuple[list[str], torch.Tensor, torch.Tensor | None]  # names, raw inputs, targets where known


def read_inputs(spec: InputSpec, path: Path) -> Inputs:
    """Prediction inputs from ``path``: their names, raw inputs (``spec.normalize`` makes model inputs of
    them) and, where the file says, targets (class indices or values)."""
    if not path.exists():
        raise DataError(f"input={path} does not exist; pass an image, a folder of images or a CSV file")
    return read_images(spec, path) if spec.kind == "image" else read_rows(spec, path)


# -- images ------------------------------------------------------------------------------------------
def image_transform(input_shape: Sequence[int], to_float: bool = True) -> Callable[[Any], torch.Tensor]:
    """PIL image -> (C, H, W) float tensor in [0, 1]: resized to the trained size, grey if 1 channel; with
    ``to_float=False`` its uint8 pixels (what a decoded image folder keeps). A picklable function (DataLoader
    workers get it)."""
    return functools.partial(_to_tensor, tuple(input_shape), to_float)


def _to_tensor(input_shape: tuple[int, int, int], to_float: bool, image) -> torch.Tensor:
    """What torchvision's ``resize`` (bilinear), ``rgb_to_grayscale``, ``pil_to_tensor`` and ``to_dtype(scale=True)``
    make of a PIL image, bit for bit, in plain PIL and numpy calls: at a server's small images their
    dispatch and torch's per-call cost were most of the time (a 28x28 grey image: 56 us then, 14 now)."""
    from PIL import Image

    channels, height, width = input_shape
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    if channels == 1 and image.mode != "L":  # images are read as RGB (grey files as they are: decode_image)
        image = image.convert("L")
    pixels = np.asarray(image).reshape(height, width, -1).transpose(2, 0, 1)  # a read-only view
    if to_float:  # uint8 to float32, then times 1 / 255 in float32: torch's arithmetic, in numpy
        return torch.from_numpy(np.multiply(pixels, 1 / 255, dtype=np.float32))
    return torch.from_numpy(pixels.copy())


def image_files(path: Path) -> list[Path]:
    """``path`` itself, or the image files in the folder ``path`` in name order."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
    return files


def read_class_folders(folder: Path, input_shape: Sequence[int], to_float: bool = True):
    """torchvision's ImageFolder of ``folder/<class>/<image>`` (images as ``image_transform`` makes them), or a
    one-line error."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder), transform=image_transform(input_shape, to_float))
    except (FileNotFoundError, OSError) as error:
        raise DataError(
            f"{folder}: {error}; expected one sub-folder of images per class (root/<class>/<image>), "
            "optionally under root/train, root/val, root/test"
        ) from None


class TooManyPixels(DataError):
    """Image files that would decode to more pixels than allowed (a server's ``max_pixels``): refused from
    their headers, before any pixel is decoded."""


def open_image(source: Path | IO[bytes], input_shape: Sequence[int], name: str | None = None):
    """An image file opened but not decoded: PIL reads only its header (size, mode). A JPEG is set to decode
    at the smallest power-of-two reduction (1/2 to 1/8) still at least the model's size (``Image.draft``:
    the JPEG decoder scales while decoding, so a 12 MP photo for a 224x224 model decodes 64x fewer pixels);
    ``image.size`` is the size it will decode to. A file that is no image is a ``DataError``."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        raise DataError(f"{name or source} is not an image; this model predicts on image files") from None
    except Image.DecompressionBombError as error:  # PIL's own limit, checked as it opens the file
        raise TooManyPixels(f"{name or source} is too large to decode ({error})") from None
    except (OSError, ValueError, SyntaxError) as error:  # a header PIL knows but cannot read
        raise DataError(f"{name or source} is not a readable image ({error})") from None
    image.draft(None, (input_shape[2], input_shape[1]))  # a no-op but for JPEGs
    return image


def decode_image(image, input_shape: Sequence[int], name: str) -> torch.Tensor:
    """An image from ``open_image`` decoded as the model's raw input (C, H, W) in [0, 1]; a truncated or
    corrupt file is a ``DataError``."""
    from PIL import Image

    # grey files for a 1-channel model straight to grey: the pixels of the RGB round trip, a quarter the memory
    mode = "L" if input_shape[0] == 1 and image.mode in ("1", "L") else "RGB"
    try:
        return image_transform(input_shape)(image if image.mode == mode else image.convert(mode))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # PIL's decoding errors
        raise DataError(f"{name} is not a readable image ({error})") from None


def read_image(path: Path | IO[bytes], input_shape: Sequence[int], name: str | None = None) -> torch.Tensor:
    """One image file (or file object, ``name`` saying which) as the model's raw input (C, H, W) in [0, 1].
    A file that is no image, or a truncated or oversized one, is a ``DataError``."""
    with open_image(path, input_shape, name) as image:
        return decode_image(image, input_shape, name or str(path))


def read_image_files(
    files: Sequence[tuple[str, IO[bytes]]], input_shape: Sequence[int], max_pixels: int
) -> torch.Tensor:
    """Image files (a server's uploads: ``(name, file)``) as raw inputs (N, C, H, W), decoding at most
    ``max_pixels`` pixels in all: every header is read first, and files that would decode to more together
    are a ``TooManyPixels`` naming their sizes, before any pixel is decoded. The cost of decoding (time and
    memory) grows with the pixels decoded, not with the bytes sent: a 17 KB PNG can hold 144 MP."""
    with contextlib.ExitStack() as opened:
        images = [opened.enter_context(open_image(file, input_shape, name)) for name, file in files]
        sizes = [image.size for image in images]
        total = sum(width * height for width, height in sizes)
        if total > max_pixels:
            largest = max(range(len(sizes)), key=lambda i: sizes[i][0] * sizes[i][1])
            width, height = sizes[largest]
            which = f"{files[largest][0]} decodes to {width}x{height} pixels ({width * height / 1e6:.1f} MP)"
            if len(files) > 1:
                which = f"the {len(files)} images decode to {total / 1e6:.1f} MP in all (the largest, {which})"
            raise TooManyPixels(
                f"{which}, over the limit of {max_pixels / 1e6:g} MP per request (max_pixels); "
                "send smaller images, or fewer per request"
            )
        return torch.stack(
            [decode_image(image, input_shape, name) for image, (name, _) in zip(images, files, strict=True)]
        )


def read_images(spec: InputSpec, path: Path) -> Inputs:
    """An image, a folder of images, or a folder of class folders (then the labels come along)."""
    if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        folder = read_class_folders(path, spec.input_shape)
        unknown = sorted(set(folder.classes) - set(spec.class_names))
        if unknown:
            raise DataError(
                f"{path}: class folders {unknown} are not among the training classes {spec.class_names}"
            )
        labels = torch.tensor([spec.class_names.index(folder.classes[t]) for t in folder.targets])
        images = torch.stack([folder[i][0] for i in range(len(folder))])
        return [p for p, _ in folder.samples], images, labels
    files = image_files(path)
    return [str(f) for f in files], torch.stack([read_image(f, spec.input_shape) for f in files]), None


# -- tables ------------------------------------------------------------------------------------------
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
    """Table rows (a DataFrame, or JSON-like dicts as a server receives them) to raw inputs for
    ``spec.normalize``."""
    return encode_features(rows, spec.columns, spec.na_values, source, spec.target)[0]


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
    if spec.target not in frame.columns:
        return None
    labels = as_text(frame[spec.target], spec.na_values)
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


def read_rows(spec: InputSpec, path: Path) -> Inputs:
    """New rows from a table file, encoded with the training run's columns, categories and statistics."""
    if path.suffix.lower() not in TABLE_SUFFIXES and path.is_file():
        raise DataError(f"{path} is not a CSV, TSV or Parquet file; this model predicts from table rows")
    frame = read_table(path, spec.na_values)
    x, incomplete = encode_features(frame, spec.columns, spec.na_values, str(path), spec.target)
    if incomplete.any():
        log.info("%s: %d rows with missing values, filled with the training means", path.name, incomplete.sum())
    return [str(i) for i in range(len(frame))], x, encode_targets(spec, frame, str(path))
