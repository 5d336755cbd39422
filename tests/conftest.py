"""Shared fixtures and helpers: configs composed with hydra.compose (as train.py composes them), shrunk for
speed; the real command-line entry points; what a run wrote (metrics.json, TensorBoard scalars); small data
set files in their native formats."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import pickle
import re
import runpy
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainlab.dataloader import BatchedData, TensorData
from trainlab.run import build_data, train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
QUIET = "trainer.progress=false"  # for the command line; make_config sets it already

# The tests' models are tiny: on a few shared cores one thread is many times faster than several waiting on
# each other. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def make_config(*overrides: str, config_name: str = "train") -> DictConfig:
    """The config train.py would see for ``overrides``, with the progress bar off."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        extra = ["trainer.progress=false"] if config_name == "train" else []
        return compose(config_name, overrides=[*extra, *overrides])


def make_data(*overrides: str) -> BatchedData:
    """The data set of the train config for ``overrides``, set up (loaded, split, fitted) as a run's is."""
    return build_data(make_config(*overrides))


@pytest.fixture
def train_run(tmp_path):
    """``train_run(*overrides) -> (run_dir, metrics)``: a training run in a fresh folder under tmp_path."""
    counter = iter(range(1000))

    def run(*overrides: str) -> tuple[Path, dict]:
        run_dir = tmp_path / f"run{next(counter)}"
        metrics = train(make_config(*overrides), run_dir)
        return run_dir, metrics

    return run


def cli(script: str, *args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>`` as a user would, returning the completed process."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_main(script: str, *args: str) -> tuple[int, str]:
    """Run ``python <script> <args>`` through its real Hydra entry point, but in this process (no second
    import of torch): returns the exit code and what the command wrote to stderr."""
    argv, stderr = sys.argv, io.StringIO()
    sys.argv = [str(ROOT / script), *args]
    try:
        with contextlib.redirect_stderr(stderr):
            runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
    return code, stderr.getvalue()


# -- what a run wrote ---------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    """A CSV file a run or predict.py wrote, as one dict per row (header: keys)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_metrics(run_dir: Path) -> dict:
    """The run's final metrics, as train.py wrote them to ``metrics.json``."""
    return json.loads((run_dir / "metrics.json").read_text())


def assert_same_weights(run_dir: Path, other_run_dir: Path) -> None:
    """The model weights in the two runs' last.ckpt are bitwise equal."""
    ours, theirs = (
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["model"] for d in (run_dir, other_run_dir)
    )
    assert ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar the run logged, read back with TensorBoard's own reader: tag -> [(step, value)]."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep all
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def scalar_values(run_dir: Path, tag: str) -> list[float]:
    """The values logged under ``tag``, in order."""
    return [value for _, value in scalars(run_dir)[tag]]


def signal_at(epoch: int, batch: int, signum: int):
    """``TensorData.train_batches`` that sends this process ``signum`` as it hands out batch number ``batch``
    (negative: from the end) of ``epoch``: a signal arriving at a known moment."""
    original = TensorData.train_batches

    def train_batches(data: TensorData, this_epoch: int, start: int = 0):
        for i, batch_ in enumerate(original(data, this_epoch, start), start):
            if (this_epoch, i) == (epoch, batch % data.num_batches("train")):
                os.kill(os.getpid(), signum)
            yield batch_

    return train_batches


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> tuple[Path, dict]:
    """The default run (``python train.py``: mlp on digits), trained once and shared by tests that only
    read what it wrote."""
    run_dir = tmp_path_factory.mktemp("digits") / "run"
    return run_dir, train(make_config(), run_dir)


# -- small data set files in their native formats ------------------------------------------------------
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file of unsigned bytes (MNIST's format): magic 0x0000 08 <ndim>, big-endian
    int32 sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, name: str = "MNIST", n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict:
    """Random 28x28 images and labels as ``root/<name>/raw/*-ubyte``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    raw = root / name / "raw"
    for prefix, split in (("train", "train"), ("t10k", "test")):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", arrays[f"{split}_images"])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", arrays[f"{split}_labels"])
    return arrays


def write_cifar10(root: Path, per_batch: int = 8, seed: int = 0) -> tuple[dict, dict[str, str]]:
    """Random images as CIFAR-10's python pickle batches in ``root/cifar-10-batches-py``; returns the
    arrays written (HWC images) and the MD5 of each file."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"data_batch_{i}": "train" for i in range(1, 6)} | {"test_batch": "test"}
    arrays: dict[str, list] = {"train_images": [], "train_labels": [], "test_images": [], "test_labels": []}
    for name, split in files.items():
        images = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {"batch_label": name, "labels": labels, "data": images.reshape(per_batch, -1), "filenames": []}
        (folder / name).write_bytes(pickle.dumps(batch))
        arrays[f"{split}_images"].append(images.transpose(0, 2, 3, 1))
        arrays[f"{split}_labels"] += labels
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    md5s = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in folder.iterdir()}
    return {k: np.concatenate(v) if k.endswith("images") else np.array(v) for k, v in arrays.items()}, md5s


def accept_cifar10_checksums(monkeypatch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    """Make torchvision's CIFAR10 reader expect our files' MD5s (it checks every file against its list)."""
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5s[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5s["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5s["batches.meta"]})


@pytest.fixture
def image_data_dir(tmp_path, monkeypatch) -> Path:
    """A ``paths.data_dir`` with small MNIST, Fashion-MNIST and CIFAR-10 files that torchvision reads."""
    write_mnist(tmp_path, "MNIST")
    write_mnist(tmp_path, "FashionMNIST", seed=1)
    _, md5s = write_cifar10(tmp_path)
    accept_cifar10_checksums(monkeypatch, md5s)
    return tmp_path


# -- a user's own data ----------------------------------------------------------------------------------
def write_csv(path: Path, n: int = 300, seed: int = 0) -> Path:
    """Numeric ``age`` (10% missing), numeric ``income`` (unique, 20 + 0.2 k), text ``colour`` (8% missing)
    and a ``label`` (yes/no) that depends on income and colour."""
    rng = np.random.default_rng(seed)
    income = 20 + 0.2 * rng.permutation(n)
    age = rng.normal(40, 12, n).round(1)
    colour = rng.choice(["red", "green", "blue"], n)
    shift = {"red": 2.0, "green": 0.0, "blue": -2.0}
    label = [0.2 * (i - 50) + shift[c] + rng.normal(0, 0.5) > 0 for i, c in zip(income, colour, strict=True)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["age", "income", "colour", "label"])
        for i in range(n):
            writer.writerow(
                [
                    "" if rng.random() < 0.1 else age[i],
                    f"{income[i]:.1f}",
                    "NA" if rng.random() < 0.08 else colour[i],
                    "yes" if label[i] else "no",
                ]
            )
    return path


def own_data(option: str, folder: Path) -> list[str]:
    """The settings that ``dataset=<option>`` for a user's own files requires (``csv``, ``image_folder``,
    ``text``), pointing at small files written into ``folder`` (``write_csv``, ``write_images``,
    ``write_tsv``); none for the others."""
    if option == "csv":
        path = write_csv(folder / "people.csv")
        return [f"dataset.path={path}", "dataset.target=label", "dataset.missing=impute"]
    if option == "text":
        return [f"dataset.path={write_tsv(folder / 'messages.tsv', messages(60))}"]
    if option == "image_folder":
        root = write_images(folder / "photos", per_class=6, size=8)
        return [f"dataset.root={root}", "dataset.image_size=8", "dataset.num_workers=0"]
    return []


CLASSES = ("diagonal", "horizontal", "vertical")


def write_images(root: Path, per_class: int, size: int = 16, seed: int = 0) -> Path:
    """Striped PNGs in one folder per stripe direction, random colours, period, phase and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        coordinate = {"horizontal": yy, "vertical": xx, "diagonal": xx + yy}[name]
        for i in range(per_class):
            stripes = np.sin(2 * np.pi * coordinate / rng.uniform(4, 7) + rng.uniform(0, 6.3)) > 0
            image = np.where(stripes[..., None], rng.uniform(0, 255, 3), rng.uniform(0, 255, 3))
            image += rng.normal(0, 15, (size, size, 3))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


SPAM = ["free", "win", "prize", "cash", "claim", "urgent", "txt", "reply", "offer", "£1000"]
HAM = ["see", "you", "later", "home", "dinner", "love", "ok", "tomorrow", "going", "café"]
COMMON = ["the", "a", "to", "i", "is", "and", "it", "for", "on", "with", "my", "your"]
FULL_WIDTH_FREE = "\uff26\uff32\uff25\uff25"  # FREE in full-width letters, which NFKC makes plain


def messages(n: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """(label, text): about 30% spam; each message 2-4 words of its class among common ones, one in ten with
    a word of the other class; quotes that open and never close, full-width letters, accents and emoji."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = "spam" if rng.random() < 0.3 else "ham"
        own, other = (SPAM, HAM) if label == "spam" else (HAM, SPAM)
        words = list(rng.choice(own, rng.integers(2, 5))) + list(rng.choice(COMMON, rng.integers(2, 8)))
        if rng.random() < 0.1:
            words.append(str(rng.choice(other)))
        rng.shuffle(words)
        text = " ".join(words)
        if i % 7 == 0:
            text = f'"{text}'  # an opening quote and no closing one
        if i % 11 == 0:
            text = text.replace("free", FULL_WIDTH_FREE)  # NFKC: FREE, then lowercased
        if i % 13 == 0:
            text += " 😀 ok?!"
        rows.append((label, text))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Tab-separated, no quoting (as the SMS Spam Collection): header, an empty line, an empty message."""
    lines = ["label\ttext"] + [f"{label}\t{text}" for label, text in rows]
    lines.insert(5, "")  # a blank line: skipped
    lines.insert(9, "ham\t")  # a message with no text: dropped from training
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


PHOTO_CLASSES = ("disc", "square")


def write_photos(root: Path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """Photo-like JPEGs (no photo data set ships here): a warm disc or a cool square of a random place and size
    on a lit, noisy background, saved by PIL's JPEG encoder with EXIF data (camera make, orientation 1), one
    folder per shape."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for name in PHOTO_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            light = rng.uniform(60, 200, 3) + 50 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
            image = Image.fromarray((light + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8))
            half = rng.uniform(0.2, 0.35) * size
            cx, cy = rng.uniform(half, size - half, 2)
            box = (cx - half, cy - half, cx + half, cy + half)
            warm = rng.integers(150, 256), rng.integers(40, 160), rng.integers(0, 90)  # discs warm, squares cool
            colour = tuple(int(c) for c in (warm if name == "disc" else warm[::-1]))
            draw = ImageDraw.Draw(image)
            (draw.ellipse if name == "disc" else draw.rectangle)(box, fill=colour)
            exif = Image.Exif()
            exif[0x010F], exif[0x0112] = "trainlab test camera", 1  # Make, Orientation
            image.save(root / name / f"{i}.jpg", quality=90, exif=exif)
    return root


# -- a served model ------------------------------------------------------------------------------------
class Server:
    """``python serve.py ckpt=... port=0`` in the background; ready once uvicorn prints its address. Its output
    (uvicorn's on stderr, trainlab's log on stdout) is collected in ``lines``. One worker process unless the
    overrides say otherwise: each worker loads torch and the model, and a test of batching needs its requests
    in one process. Every one started (in a process group of its own, with its workers) is killed at the end
    of the session if a failing test left it running (``no_server_left``)."""

    started: ClassVar[list[subprocess.Popen]] = []

    def __init__(self, ckpt: Path, *overrides: str):
        workers = [] if any(o.startswith("workers=") for o in overrides) else ["workers=1"]
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "serve.py"),
                f"ckpt={ckpt}",
                "port=0",
                "access_log=false",
                *workers,
                *overrides,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        Server.started.append(self.process)
        self.lines: list[str] = []
        for line in self.process.stdout:  # blocks until the next line: an event, not a sleep
            self.lines.append(line)
            ready = re.search(r"Uvicorn running on (http://\S+)", line)
            if ready:
                self.url = ready[1]
                break
        else:
            raise AssertionError(f"serve.py exited with {self.process.wait()}: {''.join(self.lines)}")
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self) -> int:
        """SIGTERM; the exit code, which must come within 5 seconds. Then ``lines`` holds all it wrote."""
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=5)
        self.reader.join(timeout=5)
        return code

    def stop_cleanly(self) -> None:
        """SIGTERM, and uvicorn's graceful shutdown to its end: exit code 0 (or the SIGTERM it re-raises)."""
        code = self.stop()
        assert code in (0, -signal.SIGTERM), "".join(self.lines)
        assert any("Finished server process" in line for line in self.lines), "".join(self.lines)

    def stats(self) -> dict:
        return self.client.get("/health").json()


@pytest.fixture(scope="session", autouse=True)
def no_server_left():
    yield
    for process in Server.started:
        with contextlib.suppress(ProcessLookupError):  # the server's group, its workers with it
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
