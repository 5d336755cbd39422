"""Texts (``dataset=text``): messy files read one message per line, stratified seeded splits, the tokenizer
trained on the training split and stored in the spec, the three text models, and a trained model that
predicts, exports and serves from its checkpoint alone, with the training file gone."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import (
    FULL_WIDTH_FREE,
    QUIET,
    Server,
    cli,
    cli_main,
    make_config,
    make_data,
    messages,
    read_csv,
    read_metrics,
    write_tsv,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainlab import model as models
from trainlab.dataloader.kinds.text import TextKind
from trainlab.export import export
from trainlab.inference import Predictor
from trainlab.predict import predict
from trainlab.run import build, train

MODELS = ["embedding_bag", "rnn", "transformer"]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """RFC 4180 CSV: cells with commas, line breaks and tabs quoted (by the csv module)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i, (label, text) in enumerate(rows):
            writer.writerow([f"{text},\n\tagain" if i % 17 == 0 else text, label])
    return path


def text_run(path: Path, model: str, *overrides: str) -> list[str]:
    return [
        "dataset=text",
        f"dataset.path={path}",
        f"model={model}",
        "optimizer.lr=0.01",
        "model.embedding_dim=16",
        *overrides,
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("texts") / "messages.tsv", messages())


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, Path]:
    """An 8-epoch run of each text model on ``corpus``: their run dirs."""
    dirs = {}
    for model in MODELS:
        dirs[model] = tmp_path_factory.mktemp(model) / "run"
        train(make_config(*text_run(corpus, model, "trainer.max_epochs=8")), dirs[model])
    return dirs


# -- reading and splitting --------------------------------------------------------------------------------
def test_a_tsv_with_quotes_is_read_one_message_per_line_and_split_by_class(corpus, caplog):
    with caplog.at_level(logging.INFO, logger="trainlab"):
        data = make_data("dataset=text", f"dataset.path={corpus}", "model=embedding_bag")
    sizes = {split: data.num_samples(split) for split in ("train", "val", "test")}
    assert sum(sizes.values()) == 300  # every message, none merged by its quotes; the empty one dropped
    assert any("dropped 1 of 301 texts that are empty" in r.getMessage() for r in caplog.records)
    labels = [label for label, _ in messages()]
    spam = labels.count("spam")
    assert int((data.y_test == data.classes.index("spam")).sum()) == round(spam * 0.2)  # stratified
    assert data.classes == ["ham", "spam"] and data.task.kind == "multiclass"
    again = make_data("dataset=text", f"dataset.path={corpus}", "model=embedding_bag")
    assert data.input_spec() == again.input_spec()  # the same tokenizer, token for token
    assert torch.equal(data.indices["test"], again.indices["test"])


def test_csv_jsonl_parquet_and_class_folders_hold_the_same_texts(tmp_path):
    rows = messages(120, seed=1)
    frame = pd.DataFrame(rows, columns=["label", "text"])
    write_csv(tmp_path / "m.csv", rows)
    frame.to_json(tmp_path / "m.jsonl", orient="records", lines=True, force_ascii=False)
    frame.to_parquet(tmp_path / "m.parquet")
    sizes = {}
    for name in ("m.csv", "m.jsonl", "m.parquet"):
        data = make_data("dataset=text", f"dataset.path={tmp_path / name}")
        sizes[name] = sum(data.num_samples(split) for split in ("train", "val", "test"))
    assert set(sizes.values()) == {120}, sizes
    for i, (label, text) in enumerate(rows):
        (tmp_path / "folder" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / label / f"{i}.txt").write_text(text + "\n", encoding="utf-8")
    folder = make_data("dataset=text", f"dataset.root={tmp_path / 'folder'}")
    assert (
        folder.classes == ["ham", "spam"] and sum(folder.num_samples(s) for s in ("train", "val", "test")) == 120
    )


def test_the_tokenizer_cleans_counts_rare_words_and_cuts_long_texts(corpus, caplog):
    with caplog.at_level(logging.INFO, logger="trainlab"):
        data = make_data(
            "dataset=text", f"dataset.path={corpus}", "dataset.max_length=6", "dataset.replace=[numbers]"
        )
    cut = [r.getMessage() for r in caplog.records if "longer than max_length=6" in r.getMessage()]
    assert cut and all(int(line.split()[0]) > 0 for line in cut)
    kind = TextKind(data.input_spec())
    tokens = kind.tokenizer.encode(f"{FULL_WIDTH_FREE} Prize 1000 zyzzyva").tokens
    assert tokens == ["free", "prize", "xxnum", "[UNK]"]  # NFKC, lowercase, a placeholder, a word never seen
    (ids, lengths), _ = next(data.train_batches(0))
    assert ids.dtype == torch.int64 and ids.shape[1] == int(lengths.max()) <= 6  # the batch's own longest
    assert bool((ids[torch.arange(ids.shape[1]) >= lengths[:, None]] == 0).all())  # padded with [PAD]


@pytest.mark.parametrize("tokenizer", ["wordpiece", "bpe"])
def test_subword_tokenizers_are_trained_alike_twice(corpus, tokenizer):
    first, second = (
        make_data("dataset=text", f"dataset.path={corpus}", f"dataset.tokenizer={tokenizer}") for _ in "12"
    )
    assert first.input_spec() == second.input_spec()
    assert TextKind(first.input_spec()).tokenizer.encode("Claim PRIZE").tokens == ["claim", "prize"]


# -- models -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_each_model_learns_and_ignores_padding(runs, corpus, model):
    assert read_metrics(runs[model])["test/acc"] >= 0.9
    run = build(make_config(*text_run(corpus, model)))
    net = run.model.eval()
    (ids, lengths), _ = next(iter(run.data.batches("test")))
    wide = torch.nn.functional.pad(ids, (0, 5))  # five more pads on every text
    with torch.no_grad():
        alone = torch.cat([net(ids[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(4)])
        assert torch.allclose(net(wide, lengths)[:4], alone, atol=1e-5)


def test_the_rnn_over_max_length_steps_equals_packed_sequences(monkeypatch):
    net = models.RNN(50, 0, 3, 12, "GRU", 8, 8, 2, True, 0.0).eval()
    ids, lengths = torch.randint(1, 50, (4, 7)), torch.tensor([7, 1, 3, 5])
    with torch.no_grad():
        packed = net(ids, lengths)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)  # the path torch.export traces
        assert torch.allclose(net(ids, lengths), packed, atol=1e-6)


# -- inference from the checkpoint alone ------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_onnx_export_takes_ids_and_lengths_and_equals_the_runs_test_accuracy(runs, model, tmp_path):
    ckpt = runs[model] / "checkpoints" / "best.ckpt"
    result = export(make_config(f"ckpt={ckpt}", f"output={tmp_path / 'm.onnx'}", config_name="export"))
    assert result["inputs"].startswith("the test split") and result["max_abs_diff"] <= 1e-4
    assert result["onnx/acc"] == pytest.approx(read_metrics(runs[model])["test/acc"], abs=1e-6)
    onnx, torch_model = Predictor.load(tmp_path / "m.onnx"), Predictor.load(ckpt)
    assert [i.name for i in onnx.session.get_inputs()] == ["ids", "lengths"]
    raw = torch_model.kind.encode(["claim your free prize now", "ok", "see you at home for dinner tomorrow " * 3])
    assert (onnx(raw) - torch_model(raw)).abs().max() <= 1e-4


def test_predict_and_serve_without_the_training_file(runs, corpus, tmp_path, monkeypatch):
    """The acceptance's round trip: the training file moved away, predict.py on a .txt and on a table with
    labels, serve.py on the .ckpt and the .onnx: the same labels for the same texts."""
    ckpt = runs["rnn"] / "checkpoints" / "best.ckpt"
    export(make_config(f"ckpt={ckpt}", f"output={tmp_path / 'rnn.onnx'}", config_name="export"))
    shutil.move(corpus, tmp_path / "moved.tsv")
    try:
        texts = ["Claim your FREE prize now", "", 'see you "at home', "café offer £1000 😀"]
        (tmp_path / "new.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        monkeypatch.chdir(tmp_path)
        assert predict(make_config(f"ckpt={ckpt}", f"input={tmp_path / 'new.txt'}", config_name="predict")) == {}
        rows = read_csv(tmp_path / "predictions.csv")
        assert [row["input"] for row in rows] == ["1", "2", "3", "4"]
        assert [row["note"] for row in rows] == ["", "empty text", "", ""]  # predicted, and flagged
        labels = [row["label"] for row in rows]
        assert labels[0] == "spam" and labels[2] == "ham"

        labelled = pd.DataFrame({"text": ["win cash now", "dinner at home?"], "label": ["spam", "ham"]})
        labelled.to_csv(tmp_path / "labelled.csv", index=False)
        metrics = predict(
            make_config(
                f"ckpt={tmp_path / 'rnn.onnx'}", f"input={tmp_path / 'labelled.csv'}", config_name="predict"
            )
        )
        assert metrics["input/acc"] == 1.0 and (tmp_path / "predictions_confusion_matrix.png").is_file()

        for source in (ckpt, tmp_path / "rnn.onnx"):
            server = Server(source)
            try:
                answer = server.client.post("/predict", json={"texts": [texts[0], texts[2], texts[3]]})
                assert [p["label"] for p in answer.json()["predictions"]] == [labels[0], labels[2], labels[3]]
                empty = server.client.post("/predict", json={"texts": ["ok", "  "]})
                assert empty.status_code == 400 and "texts[1] is empty" in empty.json()["error"]
                assert server.client.post("/predict", json={"texts": ["ok"]}).status_code == 200  # still serving
            finally:
                server.stop_cleanly()
    finally:
        shutil.move(tmp_path / "moved.tsv", corpus)


def test_tensorboard_shows_misclassified_texts_and_the_confusion_matrix(runs):
    def tables(run_dir: Path) -> dict[str, str]:
        events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "images": 0})
        events.Reload()
        assert "test/confusion_matrix" in events.Tags()["images"]
        return {
            tag.removesuffix("/text_summary"): events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
            for tag in events.Tags()["tensors"]
            if tag.endswith("/text_summary")
        }

    shown = {model: tables(run_dir) for model, run_dir in runs.items()}
    assert all(table["inputs/train"].startswith("| | text |\n|---|---|\n| ") for table in shown.values())
    wrong = [model for model in MODELS if read_metrics(runs[model])["test/acc"] < 1]
    assert wrong, "the scenario needs a model that got some test texts wrong"
    for model in wrong:
        rows = shown[model]["test/misclassified"].splitlines()[2:]
        assert rows and all(row.startswith(("| true ham, pred spam |", "| true spam, pred ham |")) for row in rows)


# -- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, overrides, message",
    [
        (b"label\tbody\nham\thi\n", [], "has no text column 'text'"),
        (b"label\ttext\nham\t\nspam\t\n", [], "the text column 'text' is empty"),
        (b"label\ttext\nham\tcaf\xe9\n", [], "is not UTF-8 text"),
        (b"label\ttext\nham\thi\nham\tyo\n", [], "has a single class ['ham']"),
        (b"label\ttext\nham\thi\n", ["dataset.target=class"], "dataset.target=class is not a column"),
    ],
    ids=["no-text-column", "empty-text-column", "latin-1", "one-class", "no-target-column"],
)
def test_bad_text_files_get_one_line(tmp_path, content, overrides, message):
    (tmp_path / "bad.tsv").write_bytes(content)
    code, stderr = cli_main(
        "train.py",
        "dataset=text",
        f"dataset.path={tmp_path / 'bad.tsv'}",
        "model=embedding_bag",
        *overrides,
        QUIET,
    )
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and message in lines[0], stderr


def test_a_text_model_on_images_is_refused_in_one_line():
    code, stderr = cli_main("train.py", "model=rnn", QUIET)
    assert code == 1 and "model RNN is not made for image inputs" in stderr


# -- resume and cross-validation ------------------------------------------------------------------------------
def test_a_resumed_text_run_is_bitwise_identical(corpus, tmp_path):
    from test_resume import assert_same_tensors, final_state

    run = text_run(corpus, "rnn", "model.dropout=0.3")
    train(make_config(*run, "trainer.max_epochs=2"), tmp_path / "straight")
    train(make_config(*run, "trainer.max_epochs=1"), tmp_path / "half")
    last = tmp_path / "half" / "checkpoints" / "last.ckpt"
    train(make_config(*run, "trainer.max_epochs=2", f"ckpt_path={last}"), tmp_path / "resumed")
    assert_same_tensors(final_state(tmp_path / "straight"), final_state(tmp_path / "resumed"))


def test_kfold_on_texts_is_one_group_of_five(corpus, tmp_path):
    done = cli(
        "train.py",
        "-m",
        "cv=kfold",
        *text_run(corpus, "embedding_bag", "trainer.max_epochs=1"),
        QUIET,
        f"hydra.sweep.dir={tmp_path}",
    )
    assert done.returncode == 0, done.stderr
    (group,) = read_csv(tmp_path / "groups.csv")
    assert (group["n"], group["failed"]) == ("5", "0")
    folds = [json.loads(p.read_text()) for p in tmp_path.glob("*/metrics.json")]
    assert len(folds) == 5 and len({fold["test/acc"] for fold in folds}) >= 1
