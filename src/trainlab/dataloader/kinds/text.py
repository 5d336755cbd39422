"""Texts: the kind of input of ``dataset=text`` (messages, reviews, documents; one class label each).

A text is cleaned and split into tokens by a HuggingFace ``tokenizers`` tokenizer (Rust, kept up to date;
torchtext is deprecated), trained on the training split alone: Unicode NFKC normalisation (``normalize``),
optional placeholders for e-mail addresses, URLs and numbers (``replace``), lowercasing, then words and
punctuation apart (``Whitespace``), and a vocabulary of words (``word``: words seen fewer than ``min_freq``
times become ``[UNK]``) or of subwords (``bpe``, ``wordpiece``), at most ``max_vocab`` tokens. The cleaning is
part of the tokenizer, whose JSON is the whole recipe: the spec stores it as text, and training, predict,
serve and the ONNX export's server all tokenise with it.

Raw inputs (what a served or exported model takes) are token ids, (N, L) int64 padded with ``padding_idx``
(``[PAD]``, 0) to the longest, and each text's length in tokens, (N,) int64, at most ``max_length`` (longer
texts are cut, and counted). Tokenising is Rust code, not tensor operations, so it happens before the model:
here, once per split in training (``TextData``), and per file or request in inference (``TextKind``). An
empty text is one ``[PAD]`` token: the model's answer to no words (predict flags it; a request with one is
refused). Batches are cut to their longest text (``TextData.batch_inputs``).

The spec's ``inputs`` hold ``tokenizer`` (the tokenizer's JSON), ``vocab_size``, ``padding_idx``,
``max_length``, and the ``text`` and ``target`` column names that table files of new texts are read by.
"""

from __future__ import annotations

import csv
import functools
import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import pandas as pd
import torch
from hydra.utils import to_absolute_path
from pydantic import AfterValidator, Strict
from torch import nn

from trainlab.dataloader.base import Inputs, Normalization
from trainlab.dataloader.kinds import InputKind, Read
from trainlab.dataloader.table_encoding import as_text, class_order
from trainlab.dataloader.tensors import Splits, TensorData
from trainlab.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

PAD, UNK = "[PAD]", "[UNK]"  # ids 0 and 1 of every vocabulary
PADDING_IDX = 0
TOKENIZERS = ("word", "wordpiece", "bpe")
# what ``replace`` may name: a pattern (Oniguruma, the tokenizer's) and the word that replaces it, in this order
PLACEHOLDERS = {
    "emails": (r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", "xxemail"),
    "urls": (r"(?i)(?:https?://|www\.)\S+", "xxurl"),
    "numbers": (r"\d+(?:[.,]\d+)*", "xxnum"),
}
TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".parquet"}
SORTED_POOL = 50  # batches whose texts are sorted by length together (``sort_by_length``)


# -- tokenising -------------------------------------------------------------------------------------------
def new_tokenizer(model: str, nfkc: bool, lowercase: bool, replace: Sequence[str]) -> Tokenizer:
    """An untrained tokenizer of ``model`` (``word`` or ``bpe``) with the cleaning of the settings."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    steps = [normalizers.NFKC()] if nfkc else []
    steps += [
        normalizers.Replace(Regex(pattern), f" {word} ")
        for name, (pattern, word) in PLACEHOLDERS.items()
        if name in replace
    ]
    steps += [normalizers.Lowercase()] if lowercase else []
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK) if model == "word" else models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def train_tokenizer(
    texts: Sequence[str], model: str, min_freq: int, max_vocab: int, nfkc: bool, lowercase: bool, replace
) -> Tokenizer:
    """A tokenizer trained on ``texts``: ``[PAD]`` 0, ``[UNK]`` 1, then the tokens that are at least ``min_freq``
    times in the texts (words; for subwords, the merges), at most ``max_vocab`` in all."""
    from tokenizers import trainers

    tokenizer = new_tokenizer("word" if model == "word" else "bpe", nfkc, lowercase, replace)
    kind = trainers.WordLevelTrainer if model == "word" else trainers.BpeTrainer
    trainer = kind(vocab_size=max_vocab, min_frequency=min_freq, special_tokens=[PAD, UNK], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return as_wordpiece(tokenizer, texts, max_vocab) if model == "wordpiece" else tokenizer


def as_wordpiece(bpe: Tokenizer, texts: Sequence[str], max_vocab: int) -> Tokenizer:
    """A WordPiece tokenizer of the pieces a trained BPE tokenizer splits the training words into (``##``
    before a piece inside a word), numbered by the words' frequency. This is what HF's WordPieceTrainer does,
    but it numbers the ``##`` pieces in hash order, so two trainings on the same texts differ."""
    from tokenizers import Tokenizer, decoders, models

    words = Counter(
        word
        for text in texts
        for word, _ in bpe.pre_tokenizer.pre_tokenize_str(bpe.normalizer.normalize_str(text))
    )
    vocab = {PAD: 0, UNK: 1}
    for word in sorted(words, key=lambda w: (-words[w], w)):
        for i, piece in enumerate(token.value for token in bpe.model.tokenize(word)):
            if len(vocab) < max_vocab:
                vocab.setdefault(piece if i == 0 else f"##{piece}", len(vocab))
    wordpiece = Tokenizer(models.WordPiece(vocab, unk_token=UNK))
    wordpiece.normalizer, wordpiece.pre_tokenizer = bpe.normalizer, bpe.pre_tokenizer
    wordpiece.decoder = decoders.WordPiece()
    return wordpiece


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts to raw inputs, (ids (N, L), lengths (N,)), L the longest (at most ``max_length``); how many texts
    were cut to ``max_length`` is logged. An empty text is one ``[PAD]``. Tokenised in Rust on every core."""
    encodings = tokenizer.encode_batch(list(texts))
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
    kept = np.clip(lengths, 1, max_length)
    ids = np.full((len(encodings), kept.max(initial=1)), PADDING_IDX, np.int64)
    flat = np.fromiter((i for e in encodings for i in e.ids[:max_length]), np.int64)
    ids[np.arange(ids.shape[1]) < np.minimum(lengths, max_length)[:, None]] = flat  # row by row, in order
    cut = int((lengths > max_length).sum())
    if cut:
        log.info("%d of %d texts are longer than max_length=%d tokens: cut", cut, len(encodings), max_length)
    return torch.from_numpy(ids), torch.from_numpy(kept)


def pad_ids(parts: Sequence[torch.Tensor], width: int | None = None) -> torch.Tensor:
    """Token id matrices of several widths as one, padded to the widest (or ``width``)."""
    width = width or max(part.shape[1] for part in parts)
    return torch.cat([nn.functional.pad(part, (0, width - part.shape[1]), value=PADDING_IDX) for part in parts])


# -- reading ------------------------------------------------------------------------------------------------
def read_text_table(path: Path) -> pd.DataFrame:
    """A table file of texts, every cell as text (a missing one ""): ``.csv`` (RFC 4180: quoted cells may hold
    commas, quotes and line breaks), ``.tsv`` (no quoting: a ``"`` is a character, a line a row), ``.jsonl``
    (a JSON object per line) or ``.parquet``. Every way it can fail is a one-line ``DataError``."""
    suffix = path.suffix.lower()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(f"{path} {what}; give a {', '.join(sorted(TABLE_SUFFIXES))} file of texts")
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path} is not a {', '.join(sorted(TABLE_SUFFIXES))} file; save the texts as one")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, encoding="utf-8")
        else:
            tsv = {"sep": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", **tsv)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty; it needs a header line and at least one row") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8"
        ) from None
    except (ValueError, OSError) as error:  # pandas' and pyarrow's parse errors are ValueErrors
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(f"{path} is not a readable table of texts ({message})") from None
    if frame.empty:
        raise DataError(f"{path} has no rows")
    return frame


def texts_of(frame: pd.DataFrame, column: str, source: str, setting: str = "dataset.text") -> np.ndarray:
    """The column of texts as strings (stripped; a missing cell ""), or a one-line error where it is absent or
    holds no text at all."""
    if column not in frame.columns:
        raise DataError(
            f"{source} has no text column {column!r} ({setting}); its columns are {', '.join(map(str, frame.columns))}"
        )
    values = frame[column]
    texts = values.where(values.notna(), "").astype(str).str.strip().to_numpy(dtype=object)
    if not any(texts):
        raise DataError(f"{source}: the text column {column!r} is empty; point {setting} at the column of texts")
    return texts


def read_txt_lines(path: Path) -> list[str]:
    """A ``.txt`` file's lines (``\\n`` or ``\\r\\n``), the last one's line break optional."""
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text ({error.reason}); save it as UTF-8") from None
    lines = re.split(r"\r?\n", content)
    return lines[:-1] if lines[-1] == "" else lines


def read_class_folders(root: Path) -> tuple[list[str], list[str], list[str]]:
    """``root/<class>/<text>.txt``: each file one text; (texts, their class names, files)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    texts, labels, files = [], [], []
    for folder in folders:
        for file in sorted(folder.glob("*.txt")):
            try:
                texts.append(file.read_bytes().decode("utf-8-sig").strip())
            except UnicodeDecodeError as error:
                raise DataError(f"{file} is not UTF-8 text ({error.reason}); save it as UTF-8") from None
            labels.append(folder.name)
            files.append(str(file))
    if not texts:
        raise DataError(f"{root} has no class folders of .txt files (root/<class>/<text>.txt)")
    return texts, labels, files


def label_indices(labels: pd.Series, classes: list[str], source: str) -> torch.Tensor | None:
    """Class labels as indices into ``classes`` (as their spelling in tables: ``1``, not ``1.0``); None where
    some are missing; unknown ones are a ``DataError``."""
    spelled = as_text(labels)
    if spelled.isna().any():
        return None
    index = pd.Index(classes).get_indexer(spelled)
    if (index < 0).any():
        unknown = sorted(set(spelled[index < 0]))[:5]
        raise DataError(f"{source}: labels {unknown} are not among the training classes {classes}")
    return torch.from_numpy(index.astype(np.int64))


# -- inference ------------------------------------------------------------------------------------------------
class Tokens(nn.Module):
    """The preprocessing of texts inside a served or exported model: none (the tokenizer runs before it); the
    raw inputs, token ids and lengths, are the model's inputs."""

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ids, lengths


class TextKind(InputKind):
    name = "text"
    description = "texts"
    files = "a .txt file (one text per line), a .csv, .tsv, .jsonl or .parquet file with the text column, or a folder of class folders of .txt files"
    request_field = "texts"
    request_type = str
    request_description = "texts, one input each"
    onnx_inputs = ("ids", "lengths")

    @functools.cached_property
    def tokenizer(self) -> Tokenizer:
        from tokenizers import Tokenizer

        return Tokenizer.from_str(self.spec.inputs["tokenizer"])

    def model_sizes(self) -> dict[str, Any]:
        return {"vocab_size": self.spec.inputs["vocab_size"], "padding_idx": self.spec.inputs["padding_idx"]}

    def summary(self) -> str:
        fields = self.spec.inputs
        return f"texts of up to {fields['max_length']} tokens from a vocabulary of {fields['vocab_size']:,}"

    def preprocessing(self) -> nn.Module:
        return Tokens()

    def example(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` texts of random tokens, of lengths 1 up to 8 (or ``max_length``), padded."""
        generator = torch.Generator().manual_seed(seed)
        width = min(8, self.spec.inputs["max_length"])
        ids = torch.randint(2, self.spec.inputs["vocab_size"], (n, width), generator=generator)
        lengths = torch.randint(1, width + 1, (n,), generator=generator)
        lengths[0] = width
        return ids.masked_fill(torch.arange(width) >= lengths[:, None], PADDING_IDX), lengths

    def onnx_dynamic_axes(self) -> list[dict[int, str]]:
        return [{0: "batch", 1: "length"}, {0: "batch"}]

    def onnx_axis_max(self) -> dict[str, int]:
        return {"length": self.spec.inputs["max_length"]}

    def check(self, raw: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (N, L) and lengths (N,), integers: ids within the vocabulary, lengths in 1 ... L, L at most
        ``max_length``."""
        fields = self.spec.inputs
        if not (isinstance(raw, tuple) and len(raw) == 2 and all(isinstance(t, torch.Tensor) for t in raw)):
            raise DataError("text inputs are two arrays: token ids (texts x tokens) and lengths (texts)")
        ids, lengths = raw
        if (
            ids.dim() != 2
            or lengths.shape != ids.shape[:1]
            or ids.is_floating_point()
            or lengths.is_floating_point()
        ):
            raise DataError(
                f"token ids of shape {tuple(ids.shape)} and lengths of shape {tuple(lengths.shape)}: expected "
                "integer arrays (texts, tokens) and (texts,)"
            )
        if ids.shape[1] > fields["max_length"] or (
            len(ids) and (ids.min() < 0 or ids.max() >= fields["vocab_size"])
        ):
            raise DataError(
                f"token ids must be in [0, {fields['vocab_size']}) and at most {fields['max_length']} per text"
            )
        if len(lengths) and (lengths.min() < 1 or lengths.max() > ids.shape[1]):
            raise DataError(f"lengths must be in 1 ... {ids.shape[1]} (the token ids' width)")
        return ids.long(), lengths.long()

    def collate(self, parts: list[Inputs]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_ids([ids for ids, _ in parts]), torch.cat([lengths for _, lengths in parts])

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts as raw inputs, tokenised and cut as in training."""
        return encode(self.tokenizer, texts, self.spec.inputs["max_length"])

    def read(self, path: Path) -> Read:
        """A ``.txt`` file (a text per line; named by line number), a table file (its ``text`` column, and
        labels where its ``target`` column has them; named by row), or a folder of class folders."""
        fields = self.spec.inputs
        if path.is_dir():
            texts, labels, names = read_class_folders(path)
            targets = label_indices(pd.Series(labels), self.spec.class_names, str(path))
        elif path.suffix.lower() == ".txt":
            texts, targets = read_txt_lines(path), None
            names = [str(i) for i in range(1, len(texts) + 1)]
        else:
            frame = read_text_table(path)
            texts = list(texts_of(frame, fields["text"], str(path), "the model's text column"))
            has_labels = fields["target"] in frame.columns
            targets = (
                label_indices(frame[fields["target"]], self.spec.class_names, str(path)) if has_labels else None
            )
            names = [str(i) for i in range(len(texts))]
        notes = ["empty text" if not text.strip() else "" for text in texts]
        return Read(names, self.encode(texts), targets, notes)

    def request_schema(self) -> dict[str, Any]:
        return {"description": self.request_description, "items": {"type": "string", "pattern": r"\S"}}

    def from_request(self, values: list[Any], max_pixels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        empty = [i for i, text in enumerate(values) if not text.strip()]
        if empty:
            raise DataError(f"texts[{empty[0]}] is empty; send the text to classify")
        return self.encode(values)

    def arrays_type(self) -> Any:
        """One text as its list of token ids (JSON integers: ``3`` or ``3.0``, not ``"3"`` nor ``true``)."""
        return list[Annotated[float, Strict(), AfterValidator(integral)]]

    def arrays_schema(self) -> dict[str, Any]:
        fields = self.spec.inputs
        token = {"type": "integer", "minimum": 0, "maximum": fields["vocab_size"] - 1}
        return {"type": "array", "minItems": 1, "maxItems": fields["max_length"], "items": token}

    def from_arrays(self, values: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts as lists of token ids."""
        try:
            parts = [torch.tensor([text], dtype=torch.int64) for text in values]
        except (ValueError, TypeError, RuntimeError) as error:
            raise DataError(f"inputs are not lists of token ids ({error})") from None
        if any(part.dim() != 2 or part.shape[1] == 0 for part in parts):
            raise DataError("inputs are not lists of token ids: each text is a non-empty list of integers")
        return pad_ids(parts), torch.tensor([part.shape[1] for part in parts])


def integral(value: float) -> int:
    """A JSON number that is an integer, as JSON Schema's ``integer`` counts them (``3.0`` is one)."""
    if not value.is_integer():
        raise ValueError("a token id is an integer")
    return int(value)


# -- training -----------------------------------------------------------------------------------------------
class TextData(TensorData):
    """Texts and their class labels, from a table file (``path``: its ``text`` and ``target`` columns) or a
    folder of class folders of ``.txt`` files (``root``, optionally ``root/train``, ``root/val``,
    ``root/test``), tokenised once per split and held in memory as token ids. Always a multiclass task; the
    held-out fractions are stratified (each class held out in proportion).

    Args:
        path: a ``.csv``, ``.tsv``, ``.jsonl`` or ``.parquet`` file; or
        root: a folder of class folders.
        text, target: the table's columns of texts and of labels (also how predict reads table files).
        normalize: Unicode NFKC normalisation (full-width letters, ligatures... to their plain forms).
        lowercase: lowercase the texts.
        replace: any of ``emails``, ``urls``, ``numbers``: replaced by the words ``xxemail``, ``xxurl``, ``xxnum``.
        tokenizer: ``word`` (a vocabulary of words), ``wordpiece`` or ``bpe`` (of subwords).
        min_freq: words seen fewer times in the training texts are ``[UNK]`` (subwords: the fewest times a
            merge is seen).
        max_vocab: at most this many tokens, the most frequent (``[PAD]`` and ``[UNK]`` included).
        max_length: texts are cut to this many tokens (counted in the log).
        sort_by_length: training batches of texts of about one length (``epoch_order``): less padding.
    """

    kind = TextKind
    stratify = True

    def __init__(
        self,
        *,
        path: str | None,
        root: str | None,
        text: str,
        target: str,
        lowercase: bool,
        replace: Sequence[str],
        tokenizer: str,
        min_freq: int,
        max_vocab: int,
        max_length: int,
        sort_by_length: bool,
        **settings,
    ):
        if (path is None) == (root is None):
            raise DataError(
                "dataset=text reads a table file or a folder: add dataset.path=<texts.csv> (with dataset.text and "
                "dataset.target) or dataset.root=<folder of class folders>, one of them"
            )
        if settings.get("augment") is not None:
            raise DataError("texts are not augmented: drop augment=..., or use augment=none")
        if tokenizer not in TOKENIZERS:
            raise DataError(f"dataset.tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
        unknown = sorted(set(replace) - set(PLACEHOLDERS))
        if unknown:
            raise DataError(f"dataset.replace may name {', '.join(PLACEHOLDERS)}, not {', '.join(unknown)}")
        for name, value, least in (
            ("min_freq", min_freq, 1),
            ("max_vocab", max_vocab, 3),
            ("max_length", max_length, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise DataError(f"dataset.{name} must be an integer of at least {least}, got {value}")
        super().__init__(task="multiclass", **settings)
        self.path = Path(to_absolute_path(path)) if path is not None else None
        self.root = Path(to_absolute_path(root)) if root is not None else None
        self.text, self.target, self.lowercase, self.replace = text, target, lowercase, list(replace)
        self.tokenizer_model, self.min_freq, self.max_vocab, self.max_length = (
            tokenizer,
            min_freq,
            max_vocab,
            max_length,
        )
        self.sort_by_length = sort_by_length

    def load(self) -> Splits:
        parts = self._read_folders() if self.root is not None else {"train": self._read_table()}
        texts, labels = parts["train"]
        classes = sorted(set(labels), key=class_order)
        if len(classes) < 2:
            source = f"target column {self.target!r}" if self.path else f"{self.root}"
            raise DataError(f"{source} has a single class {classes}; classification needs at least 2")
        arrays = {}
        for name, (texts, labels) in parts.items():
            unknown = sorted(set(labels) - set(classes))
            if unknown:
                raise DataError(
                    f"{self.root / name}: classes {unknown} have no training texts in {self.root / 'train'}"
                )
            arrays[f"x_{name}"] = np.asarray(texts, dtype=object)
            arrays[f"y_{name}"] = torch.from_numpy(pd.Index(classes).get_indexer(labels).astype(np.int64))
        return Splits(**arrays, classes=classes)

    def _read_table(self) -> tuple[list[str], list[str]]:
        log.info("reading %s", self.path)
        frame = read_text_table(self.path)
        texts = texts_of(frame, self.text, str(self.path))
        if self.target not in frame.columns:
            raise DataError(
                f"dataset.target={self.target} is not a column of {self.path}; set it to one of "
                f"{', '.join(map(str, frame.columns))}"
            )
        labels = as_text(frame[self.target]).to_numpy()
        return self._drop_unusable(texts, labels, str(self.path))

    def _read_folders(self) -> dict[str, tuple[list[str], list[str]]]:
        if not self.root.is_dir():
            raise DataError(f"dataset.root={self.root} is not a folder; point it at your folder of class folders")
        nested = (self.root / "train").is_dir()
        paths = {name: self.root / name for name in ("train", "val", "test") if (self.root / name).is_dir()}
        if self.cv and "val" in paths:
            raise DataError(f"cv=kfold makes validation folds, but {paths['val']} is a fixed validation split")
        parts = {}
        for name, folder in (paths if nested else {"train": self.root}).items():
            texts, labels, _ = read_class_folders(folder)
            parts[name] = self._drop_unusable(
                np.asarray(texts, dtype=object), np.asarray(labels, dtype=object), str(folder)
            )
        return parts

    @staticmethod
    def _drop_unusable(texts: np.ndarray, labels: np.ndarray, source: str) -> tuple[list[str], list[str]]:
        """The texts that are not empty and have a label (those dropped are counted in the log)."""
        usable = (texts != "") & pd.notna(labels)
        if not usable.all():
            log.info(
                "%s: dropped %d of %d texts that are empty or have no label", source, (~usable).sum(), len(texts)
            )
        if not usable.any():
            raise DataError(f"{source} has no text with a label")
        return list(texts[usable]), [str(label) for label in labels[usable]]

    def split_inputs(self, x: np.ndarray, index: torch.Tensor | None = None) -> np.ndarray:
        return x[index.numpy()] if index is not None else x.copy()

    def fit_preprocessing(self, splits: Splits, normalization: Normalization | None) -> None:
        self.tokenizer = train_tokenizer(
            self.x_train,
            self.tokenizer_model,
            self.min_freq,
            self.max_vocab,
            self.normalize,
            self.lowercase,
            self.replace,
        )
        log.info(
            "tokenizer: %s, %d tokens (min_freq=%d, max_vocab=%d), trained on %d texts",
            self.tokenizer_model,
            self.tokenizer.get_vocab_size(),
            self.min_freq,
            self.max_vocab,
            len(self.x_train),
        )

    def transform(self, x: Inputs | np.ndarray, in_place: bool = False) -> Inputs:
        """Texts to raw inputs (token ids, lengths), once per split (``setup``)."""
        return encode(self.tokenizer, x, self.max_length)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation; with ``sort_by_length``, each run of ``SORTED_POOL`` batches of it sorted by
        length and cut into batches, and the batches shuffled (the last, smaller one stays last): the batches
        hold texts of about one length, so a batch's padding is small, and they still come in random order.
        A function of the seed and the epoch, as exact resume needs."""
        order = super().epoch_order(epoch)
        if not self.sort_by_length:
            return order
        lengths = self.x_train[1].cpu()
        batches = [
            batch
            for pool in order.split(self.batch_size * SORTED_POOL)
            for batch in pool[lengths[pool].argsort(stable=True)].split(self.batch_size)
        ]
        last = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=generator)] + last)

    def batch_inputs(self, x: Inputs, index: torch.Tensor) -> Inputs:
        ids, lengths = x
        lengths = lengths.index_select(0, index)
        return ids[:, : int(lengths.max())].index_select(0, index), lengths

    def input_fields(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer.to_str(),
            "vocab_size": self.tokenizer.get_vocab_size(),
            "padding_idx": PADDING_IDX,
            "max_length": self.max_length,
            "text": self.text,
            "target": self.target,
        }

    def show(self, samples: list[Inputs], captions: list[str]) -> str:
        """A Markdown table of the texts as the model sees them (cleaned, rare words ``[UNK]``)."""
        lines = ["| | text |", "|---|---|"]
        for (ids, length), caption in zip(samples, captions, strict=True):
            text = self.tokenizer.decode(ids[: int(length)].tolist(), skip_special_tokens=False)
            cell = text[:400].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {caption.replace(chr(10), ', ')} | {cell} |")
        return "\n".join(lines)
