"""Benchmark: loading users' data. Writes the "Data loading" section of docs/benchmarks.md.

    python benchmarks/data_speed.py                          # both parts: about 10 minutes on 2 idle cores
    python benchmarks/data_speed.py --parts tables --rows 300000 --rounds 1   # a quick look

A development tool, run from the checkout. Its two parts:

- **Tables.** A generated CSV (20 numeric columns, 2 text columns, a binary target; 300,000 rows, about
  47 MB, and 3,000,000 rows) read by trainlab's CSV data set (`dataset=csv`: read, encode, split,
  standardise; `run.build_data`) and by `pandas.read_csv(engine="pyarrow")` plus `pandas.get_dummies` of
  its text columns. Each measurement runs in a fresh subprocess that imports torch and pandas first (a
  training process has both), then times the work and reports its peak memory (`resource.getrusage`'s
  maximum resident set), and the peak above the memory after the imports (the data's share).
- **Image folders.** 20,000 Fashion-MNIST training images (and 5,000 test images) written as PNGs, one
  folder per class, from torchvision's reader of `--fashion-mnist` (read-only; the PNGs go to `--work`).
  One training epoch of `model=cnn` (batches of 64, Adam) through (a) the folder decoded once and held in
  memory (`dataset=image_folder`, the cache read), (b) the same images as in-memory tensors (an `ImageData`
  given the arrays torchvision reads), (c) the folder streamed through the DataLoader
  (`dataset.memory_budget=0`, 2 workers). Also: the first run's decode (no cache) and a later run's
  set-up (cache read).

The variants take turns within each round, in one run, and the tables show each one's best round (other
jobs on a shared machine only ever add time) and the ratio within each round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Data loading"
TEXT_COLUMNS = ["city", "plan"]
CITIES = ["Berlin", "Lagos", "Lima", "Osaka", "Perth", "Quito", "Riga", "Seoul", "Tunis", "Vienna"]
PLANS = ["basic", "family", "premium", "student", "trial"]
VARIANTS = {"pandas": "pandas", "encode": "trainlab, read + encode", "trainlab": "trainlab, built"}


# -- tables ---------------------------------------------------------------------------------------------
def write_table(path: Path, rows: int, seed: int = 0) -> Path:
    """20 numeric columns (4 decimals), 2 text columns and a binary target ``y`` that depends on both."""
    import pandas as pd
    import pyarrow as pa
    from pyarrow import csv

    rng = np.random.default_rng(seed)
    numbers = rng.normal(size=(rows, 20)).astype(np.float32)
    frame = pd.DataFrame(numbers.round(4), columns=[f"x{i}" for i in range(20)])
    frame["city"] = rng.choice(CITIES, rows)
    frame["plan"] = rng.choice(PLANS, rows)
    score = numbers[:, :5].sum(1) + (frame["plan"] == "premium").to_numpy() + rng.normal(0, 1, rows)
    frame["y"] = (score > 0).astype(np.int64)
    csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def table_child(kind: str, path: Path) -> None:
    """Run in a subprocess: read ``path`` as ``kind`` says and print seconds and memory as JSON."""
    import pandas as pd
    import pyarrow  # noqa: F401 (imported before the baseline, as pandas' engine)
    import torch  # noqa: F401 (a training process has it)

    if kind != "pandas":
        from hydra import compose, initialize_config_dir
        from hydra.utils import instantiate

        from trainlab.run import build_data

        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=["dataset=csv", f"dataset.path={path}", "dataset.target=y"])
    base = rss_mb()
    start = time.perf_counter()
    if kind == "trainlab":
        data = build_data(cfg)
        shape = list(data.x_train.shape)
    elif kind == "encode":  # what the pandas variant does: read the file, encode the whole table
        splits = instantiate(cfg.dataset, augment=None, cv=None).load()
        shape = list(splits.x_train.shape)
    else:
        encoded = pd.get_dummies(pd.read_csv(path, engine="pyarrow"), columns=TEXT_COLUMNS)
        shape = list(encoded.shape)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": base, "shape": shape}))


def measure_table(kind: str, path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--path", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def tables(work: Path, row_counts: list[int], rounds: int) -> list[str]:
    lines = [
        '### Tables: `dataset=csv` against `pandas.read_csv(engine="pyarrow")` + `get_dummies`',
        "",
        f"Time, best of {rounds} rounds: trainlab's read + encode is the data set's `load()`, the same work as "
        "the pandas variant (the whole table read, typed, encoded); built is `run.build_data`, which then also "
        "splits and standardises, what a training run waits for. Memory: the subprocess's peak resident set, "
        "and its peak above the memory after importing torch and pandas (trainlab's imports its own modules "
        "too, which the first figure counts).",
        "",
        "| rows | file | variant | time (s) | vs pandas | vs pandas per round | peak (MiB) | vs pandas | "
        "above imports (MiB) | vs pandas |",
        "| ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for rows in row_counts:
        path = work / f"table-{rows}.csv"
        if not path.is_file():
            write_table(path, rows)
        results: dict[str, list[dict]] = {kind: [] for kind in VARIANTS}
        for _ in range(rounds):
            for kind in results:
                results[kind].append(measure_table(kind, path))
        best = {kind: min(runs, key=lambda r: r["seconds"]) for kind, runs in results.items()}
        lowest = {kind: min(runs, key=lambda r: r["peak_mb"]) for kind, runs in results.items()}
        size = f"{path.stat().st_size / 2**20:.0f} MiB"
        for kind, name in VARIANTS.items():
            per_round = ", ".join(
                f"{t['seconds'] / p['seconds']:.2f}" for p, t in zip(results["pandas"], results[kind], strict=True)
            )
            seconds, peak = best[kind]["seconds"], lowest[kind]["peak_mb"]
            above = lowest[kind]["peak_mb"] - lowest[kind]["base_mb"]
            above_pandas = lowest["pandas"]["peak_mb"] - lowest["pandas"]["base_mb"]
            lines.append(
                f"| {rows:,} | {size} | {name} | {seconds:.2f} | {seconds / best['pandas']['seconds']:.2f}x | "
                f"{per_round if kind != 'pandas' else ''} | {peak:.0f} | {peak / lowest['pandas']['peak_mb']:.2f}x | "
                f"{above:.0f} | {above / above_pandas:.2f}x |"
            )
        print("\n".join(lines[-2:]), flush=True)
    return lines


TABLE_NOTES = [
    "",
    "trainlab does more than the two pandas calls: it infers each column's type and the task, drops or imputes "
    "missing values, splits, standardises and keeps the encoding for predict. Its imports (torchmetrics, "
    "TensorBoard, Hydra) are the rest of the whole-process difference.",
    "",
    "The targets: at 300,000 rows, read + encode within 1.5x pandas' time and peak memory. The per-round "
    "ratios spread widely because the pandas variant takes a fifth of a second, and a fresh process's first "
    "touch of its memory costs as much as the work here, a different amount each time.",
]


# -- image folders --------------------------------------------------------------------------------------
def write_pngs(source: Path, root: Path, n_train: int, n_test: int) -> Path:
    """The first ``n_train`` training and ``n_test`` test images of Fashion-MNIST as PNGs in
    ``root/{train,test}/<class>/``; written once."""
    from torchvision.datasets import FashionMNIST

    done = root / ".complete"
    if done.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    for split, count in (("train", n_train), ("test", n_test)):
        data = FashionMNIST(str(source), train=split == "train", download=False)
        names = [name.replace("/", "-") for name in data.classes]  # "T-shirt/top"
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = data[i]
            image.save(root / split / names[label] / f"{i:05d}.png")
    done.touch()
    return root


def image_variants(root: Path, source: Path, threads: int | None):
    """The three data sets of the image part, built, and the first-run and cached set-up times."""
    import torch
    from hydra import compose, initialize_config_dir
    from torchvision.datasets import FashionMNIST

    from trainlab.dataloader import ImageData, Splits
    from trainlab.dataloader.cache import CACHE_PREFIX
    from trainlab.run import build_data, build_model

    overrides = ["dataset=image_folder", f"dataset.root={root}", "dataset.channels=1", "dataset.image_size=28"]
    overrides += ["dataset.val_fraction=0", "model=cnn"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        streamed_cfg = compose("train", overrides=[*overrides, "dataset.memory_budget=0"])
    for stale in root.glob(f"{CACHE_PREFIX}*"):
        stale.unlink()
    start = time.perf_counter()
    build_data(cfg)
    first_setup = time.perf_counter() - start
    start = time.perf_counter()
    folder = build_data(cfg)
    cached_setup = time.perf_counter() - start

    class Arrays(ImageData):
        """The same images as tensors, straight from torchvision's reader."""

        def load(self) -> Splits:
            train, test = (FashionMNIST(str(source), train=t, download=False) for t in (True, False))
            n_train, n_test = folder.num_samples("train"), folder.num_samples("test")
            x_train, x_test = (
                d.data[:n].unsqueeze(1).float() / 255 for d, n in ((train, n_train), (test, n_test))
            )
            return Splits(x_train, train.targets[:n_train], x_test, test.targets[:n_test], classes=train.classes)

    settings = {k: cfg.dataset[k] for k in ("batch_size", "val_fraction", "seed", "normalize", "mean", "std")}
    tensors = Arrays(test_fraction=None, **settings).setup()
    streamed = build_data(streamed_cfg)
    assert folder.in_memory and not streamed.in_memory
    if threads:
        torch.set_num_threads(threads)

    def model():
        torch.manual_seed(0)
        return build_model(cfg, folder.input_spec())

    variants = {"(a) folder, in memory (cache read)": folder, "(b) in-memory tensors": tensors}
    variants["(c) folder, streamed (2 workers)"] = streamed
    return variants, model, first_setup, cached_setup


def train_epoch(data, model, optimizer, epoch: int) -> float:
    import torch.nn.functional as F

    start = time.perf_counter()
    for x, y in data.train_batches(epoch):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def images(work: Path, source: Path, rounds: int, threads: int | None) -> list[str]:
    import torch

    root = write_pngs(source, work / "fashion-mnist-png", 20_000, 5_000)
    variants, make_model, first_setup, cached_setup = image_variants(root, source, threads)
    models = {name: make_model() for name in variants}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-3) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for epoch in range(rounds):
        for name, data in variants.items():
            times[name].append(train_epoch(data, models[name], optimizers[name], epoch))
            print(f"round {epoch + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    reference = "(b) in-memory tensors"
    n = variants[reference].num_samples("train")
    lines = [
        f"### Image folders: an epoch of {n:,} Fashion-MNIST PNGs (28x28, 1 channel), `model=cnn`",
        "",
        f"Training only (batches of {variants[reference].batch_size}, Adam), {rounds} rounds; torch threads: "
        f"{torch.get_num_threads()}.",
        "",
        "| variant | epoch (s) | vs (b) | vs (b) per round |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, values in times.items():
        per_round = ", ".join(f"{v / r:.2f}" for v, r in zip(values, times[reference], strict=True))
        lines.append(f"| {name} | {min(values):.2f} | {min(values) / min(times[reference]):.2f}x | {per_round} |")
    lines += [
        "",
        f"Set-up of the folder (25,000 PNGs): the first run decodes and caches them in {first_setup:.1f} s "
        f"(on {len(os.sched_getaffinity(0))} cores); a later run reads the cache in {cached_setup:.2f} s.",
        "",
        "(a) and (b) run the same code once set up (`TensorData.train_batches` on the same number of images of "
        "the same size); differences between them are other jobs on the machine. (c) decodes every PNG again "
        "every epoch, in worker processes that compete with training for the cores.",
    ]
    return lines


# -- the report -----------------------------------------------------------------------------------------
def load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def write_section(output: Path, lines: list[str]) -> None:
    """Replace (or append) this benchmark's section of ``output``, leaving the rest as it is."""
    text = output.read_text() if output.is_file() else "# Benchmarks\n"
    section = "\n".join([SECTION, "", *lines]).rstrip() + "\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        output.write_text(text.rstrip() + "\n\n" + section)
        return
    end = text.find("\n## ", start + len(SECTION))
    output.write_text(text[:start] + section + (text[end:] if end >= 0 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["tables", "images"], default=["tables", "images"])
    parser.add_argument("--rows", nargs="+", type=int, default=[300_000, 3_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-rounds", type=int, default=1, help="rounds for tables of over a million rows")
    parser.add_argument("--image-rounds", type=int, default=2, help="rounds of the image part (minutes each)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the image part")
    parser.add_argument(
        "--fashion-mnist", type=Path, default=ROOT.parent / "shared" / "datasets", help="holds FashionMNIST/raw"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/trainlab-data-speed"))
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        table_child(args.child, args.path)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    before = load()
    lines: list[str] = []
    parts: dict[str, Callable[[], list[str]]] = {
        "tables": lambda: [
            *tables(args.work, [r for r in args.rows if r <= 1_000_000], args.rounds),
            *tables(args.work, [r for r in args.rows if r > 1_000_000], args.big_rounds)[6:],
            *TABLE_NOTES,
        ],
        "images": lambda: images(args.work, args.fashion_mnist, args.image_rounds, args.threads),
    }
    for part in args.parts:
        lines += [*parts[part](), ""]
    import torch

    header = (
        f"Written by `python benchmarks/data_speed.py` on {datetime.now():%Y-%m-%d %H:%M}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}; load average {before} before, {load()} after "
        "(1/5/15 min). The machine was shared: ratios within a round are the figures to read."
    )
    write_section(args.output, [header, "", *lines])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
