"""Benchmark: test accuracy of bf16 autocast against fp32 for each model class trainlab ships, on the data
sets of its kind of input (images, tables, texts); prints the table and writes the precision section of
docs/benchmarks.md.

    python benchmarks/precision_accuracy.py                       # about 40 minutes on 2 busy cores
    python benchmarks/precision_accuracy.py --models cnn --seeds 0 1 2 --epochs 3 --limit-batches 0

Each run is ``python train.py model=<m> dataset=<d> trainer.precision=<32|bf16> seed=<s>`` with the run's
other defaults (label smoothing 0.1, Adam); its ``test/acc`` (the test in fp32, with the best weights) is
the figure. A model class is listed as losing accuracy in bf16 when its mean over seeds and data sets is
more than 0.2 points below fp32's: such a class declares ``auto_bf16 = False``, and
``trainer.precision=auto`` then trains it in fp32. The images run on limited batches per epoch
(``--limit-batches``, per model: on 2 cores a full MNIST epoch of the ResNet takes an hour), which the table
says; the test split stays whole unless the limit is below it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from train_speed import ROOT, load_average, machine, write_section

SECTION = "## Precision: bf16 autocast against fp32"
IMAGES = ["mnist", "fashion_mnist"]
TABLES = ["breast_cancer", "wine", "iris"]
TEXTS = ["sms_spam"]
EPOCHS = {"mnist": 3, "fashion_mnist": 3}  # default epochs; the others: the run's default (conf/trainer)
# model: (overrides, data sets, default training batches per epoch: 0 = all)
MODELS = {
    "mlp": (["model=mlp"], [*IMAGES, "digits", *TABLES], 0),
    "cnn": (["model=cnn"], IMAGES, 0),
    "resnet": (["model=resnet"], IMAGES, 10),
    "linear": (["model=linear"], TABLES, 0),
    "embedding_bag": (["model=embedding_bag"], TEXTS, 0),
    "rnn": (["model=rnn"], TEXTS, 0),
    "transformer": (["model=transformer"], TEXTS, 0),
}


def data_overrides(dataset: str, data_dir: Path) -> list[str]:
    """A data set's overrides: its config, or for the SMS Spam Collection its experiment (10 epochs)."""
    if dataset == "sms_spam":
        return ["experiment=sms_spam", f"dataset.path={data_dir / 'SMSSpam' / 'SMSSpamCollection.tsv'}"]
    return [f"dataset={dataset}"]


def test_accuracy(model: str, dataset: str, precision: str, seed: int, args: argparse.Namespace) -> float:
    """One run's test accuracy."""
    overrides, _, default_limit = MODELS[model]
    limit = args.limit_batches if args.limit_batches is not None else default_limit
    with tempfile.TemporaryDirectory(prefix="trainlab-precision-") as run_dir:
        command = [
            sys.executable,
            str(ROOT / "train.py"),
            *data_overrides(dataset, args.data_dir),
            *overrides,
            f"paths.data_dir={args.data_dir}",
            *([f"trainer.max_epochs={epochs}"] if (epochs := args.epochs or EPOCHS.get(dataset)) else []),
            f"trainer.limit_batches={limit or 'null'}",
            f"trainer.precision={precision}",
            f"seed={seed}",
            "trainer.progress=false",
            "~callbacks.pictures",
            f"hydra.run.dir={run_dir}",
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(args.threads))
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        return json.loads((Path(run_dir) / "metrics.json").read_text())["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, help="per run (default: 3 for MNIST and Fashion-MNIST, else 10)")
    parser.add_argument("--limit-batches", type=int, help="training batches per epoch (0: all); default per model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    command = " ".join(["python benchmarks/precision_accuracy.py", *sys.argv[1:]])
    load_before = load_average()
    rows, losses = [], {}
    for model in args.models:
        for dataset in MODELS[model][1]:
            accuracy = {
                precision: [test_accuracy(model, dataset, precision, seed, args) for seed in args.seeds]
                for precision in ("32", "bf16")
            }
            difference = (statistics.mean(accuracy["bf16"]) - statistics.mean(accuracy["32"])) * 100
            losses.setdefault(model, []).append(difference)
            limit = args.limit_batches if args.limit_batches is not None else MODELS[model][2]
            rows.append(
                f"| {model} | {dataset} | {limit or 'all'} | "
                + " | ".join(", ".join(f"{a:.4f}" for a in accuracy[p]) for p in ("32", "bf16"))
                + f" | {difference:+.2f} |"
            )
            print(rows[-1], file=sys.stderr)
    verdicts = [
        f"- {model}: bf16 {statistics.mean(d):+.2f} points on average: "
        + ("loses more than 0.2 points: `auto_bf16 = False`, auto trains it in fp32" if statistics.mean(d) < -0.2 else "auto trains it in bf16")
        for model, d in losses.items()
    ]  # fmt: skip
    report = "\n".join([
        SECTION,
        "",
        f"Written by `{command}` on {datetime.now():%Y-%m-%d %H:%M}: {machine(args.threads)}; load average "
        f"{load_before} before, {load_average()} after (1/5/15 min). {args.epochs or '3 (MNIST, Fashion-MNIST) or 10'} epochs per run, seeds "
        f"{', '.join(map(str, args.seeds))}; test accuracy of each seed (the test in fp32 with the best weights).",
        "",
        *__doc__[__doc__.index("Each run is"):].strip().splitlines(),
        "",
        "| model | data set | training batches per epoch | test acc, fp32 | test acc, bf16 | bf16 - fp32 (points, mean) |",
        "| --- | --- | ---: | --- | --- | ---: |",
        *rows,
        "",
        *verdicts,
        "",
    ])  # fmt: skip
    print(report)
    write_section(args.output, report, SECTION)


if __name__ == "__main__":
    main()
