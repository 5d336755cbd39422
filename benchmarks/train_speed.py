"""Benchmark: trainlab against the best hand-written loop with the same libraries, the same loop with
torch's default Adam, the textbook DataLoader loop and PyTorch Lightning, on MNIST; each run is a process
of its own, timed from start to exit; prints the table with the targets and writes the training section of
docs/benchmarks.md.

    python benchmarks/train_speed.py --threads 1                   # MLP and CNN: about 15 minutes, 2 idle cores
    python benchmarks/train_speed.py --models mlp --repeats 1      # a quick look
    python benchmarks/train_speed.py --data-dir /data              # MNIST elsewhere

A development tool, run from the checkout (it times the checkout's train.py); variant (d) needs Lightning,
``pip install -e ".[bench]"``, and is skipped without it.

Every variant does the same work per epoch: it trains the same network on 54,000 MNIST images in shuffled
batches of 100 with Adam (lr 1e-3), evaluates the 6,000 validation images in batches of 256, logs the
epoch to TensorBoard and saves model and optimizer; after the last epoch it evaluates the 10,000 test
images. What each pays for beyond that:

- (r) reference (`benchmarks/hand_written.py reference`), the baseline of every ratio: MNIST decoded by
  torchvision and normalised once in memory, batches by `index_select` from `randperm`, the CNN channels-last
  and glibc's malloc told to keep freed memory (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`: what
  trainlab sets with `mallopt`), `gc.freeze()` once done, so that Python's exit does not walk every object
  left (what trainlab's entry points do) (trainlab's implementation choices), `torch.optim.Adam(fused=True)`,
  torchmetrics accuracy, a `SummaryWriter` with three scalars per epoch, one `torch.save` per epoch.
- (r') the same with glibc's default allocator settings: what keeping freed memory saves.
- (r16) the same with every forward pass and loss under `torch.autocast("cpu", dtype=torch.bfloat16)`:
  the best loop on a CPU that multiplies bf16 fast (AMX, AVX-512 bf16), the baseline of (a16).
- (a) trainlab: `python train.py` with its defaults but `trainer.label_smoothing=0` and
  `trainer.precision=32`, the reference's objective and precision: training and validation accuracy, F1
  and loss (torchmetrics); the loss and lr every 50 steps
  and the epoch's metrics to TensorBoard, with its pictures (the first batch; confusion matrix, worst
  errors and PR curves of the test); `last.ckpt` every epoch and `best.ckpt` when the validation loss
  improved, each a complete resumable checkpoint (RNG states, config, input spec) written atomically with
  fsync; the test with the best weights; metrics.json; the config printed and the progress bar drawn as in
  a terminal.
  For the CNN that includes its default `trainer.channels_last=auto`: channels-last images and weights.
- (a16) the same with its default `trainer.precision=auto`: bf16 autocast on a CPU with AMX or AVX-512
  bf16, else fp32 (the log says which), against (r16) and (r).
- (a') (a) with its default label smoothing 0.1 (the MLP only): what that default costs.
- (a'') the CNN with `trainer.channels_last=false`: what channels-last saves.
- (b) plain: (r) with torch's default Adam, which loops over the parameters: what fused Adam saves.
- (c) textbook: (r)'s loop fed by torchvision's MNIST with per-sample `ToTensor` and `Normalize` through a
  `DataLoader(shuffle=True)`, the default Adam, memory order and allocator, as in the tutorials.
- (d) Lightning: a `LightningModule` with fused Adam (the CNN channels-last) fed (r)'s in-memory batches,
  with (r)'s allocator settings, Lightning's default TensorBoard logger and checkpoint, `self.log` of the
  loss and accuracy.

*epoch* is the steady state: the mean time between the ends of epochs 1 to N, as the process prints them;
*process* is from starting the process to its exit: imports, reading the data, every epoch, the test and
shutting down. The variants take turns within each round; the tables show each one's best round (other
jobs on a shared machine only ever add time), and its ratios to (r) as the median over rounds of the same
round's ratio (the targets are checked on these). The CNN's epochs stop after `--cnn-batches` training
batches (100 by default; validation and test stay whole), so that a round takes minutes, not an hour.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HAND_WRITTEN = ROOT / "benchmarks" / "hand_written.py"


def section(threads: int | None) -> str:
    """This benchmark's section of docs/benchmarks.md, one per thread setting (other benchmarks write their
    own)."""
    if threads is None:
        return "## Training, torch's default threads"
    return f"## Training, {threads} torch thread{'s' if threads > 1 else ''} per process"


MODELS = {  # trainlab's overrides for the networks that hand_written.network writes out
    "mlp": ["model=mlp", "model.hidden_sizes=[500]", "model.dropout=0.0"],
    "cnn": ["model=cnn"],
}
VARIANTS = {
    "reference": "(r) reference loop",
    "reference_default_malloc": "(r') reference loop, default allocator",
    "reference_bf16": "(r16) reference loop, bf16 autocast",
    "trainlab": "(a) trainlab",
    "trainlab_auto": "(a16) trainlab, precision auto",
    "trainlab_smoothing": "(a') trainlab, label smoothing 0.1",  # the MLP only
    "trainlab_contiguous": "(a'') trainlab, channels_last=false",  # the CNN only
    "plain": "(b) plain loop, default Adam",
    "textbook": "(c) textbook DataLoader loop",
    "lightning": "(d) Lightning",
}
TRAINLAB_OPTIONS = {  # what the variants of trainlab add to train_py's overrides; with the models they run
    "trainlab": ["trainer.precision=32"],
    "trainlab_auto": [],
    "trainlab_smoothing": ["trainer.precision=32", "trainer.label_smoothing=0.1"],
    "trainlab_contiguous": ["trainer.precision=32", "trainer.channels_last=false"],
}
ONLY = {"trainlab_smoothing": "mlp", "trainlab_contiguous": "cnn"}
DEFAULT_ALLOCATOR = {"textbook", "reference_default_malloc"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal control sequences (colours, the bar's redrawing)
EPOCH_LINE = re.compile(r"(?:^|\] - )epoch (\d+)/\d+(?::|$)")  # trainlab's log line, or hand_written's
TEST_ACC = re.compile(r"test/acc\W+([0-9.]+)")  # trainlab's summary table, or hand_written's last line


class BenchError(RuntimeError):
    """A setting the benchmark cannot run with, or a run that failed; the message says what to do."""


# -- one run -------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """One process: its output lines, each with the seconds from the start at which it came, and its
    time from start to exit."""

    lines: list[tuple[float, str]]
    process_s: float

    @property
    def epoch_ends(self) -> list[float]:
        return [at for at, line in self.lines if EPOCH_LINE.search(line)]

    @property
    def epoch_s(self) -> float:
        """The steady-state epoch: the mean interval between epoch ends after the first."""
        ends = self.epoch_ends
        return (ends[-1] - ends[0]) / (len(ends) - 1)

    @property
    def test_acc(self) -> float:
        found = [float(m[1]) for _, line in self.lines if (m := TEST_ACC.search(line))]
        return found[-1] if found else float("nan")


def timed_run(cmd: list[str], env: dict[str, str]) -> Timing:
    """Run ``cmd`` to its exit, timing every line it prints (stdout and stderr)."""
    lines = []
    start = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        lines = [(time.perf_counter() - start, ANSI.sub("", line)) for line in process.stdout]
    timing = Timing(lines, time.perf_counter() - start)
    if process.returncode:
        tail = "".join(line for _, line in lines[-20:])
        raise BenchError(f"{' '.join(cmd)} failed (exit code {process.returncode}):\n{tail}")
    return timing


def environment(threads: int | None) -> dict[str, str]:
    """The runs' environment: the checkout's sources first, output drawn as in a terminal (trainlab's
    progress bar and coloured config), and ``threads`` torch threads in each."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        TTY_COMPATIBLE="1",
        TTY_INTERACTIVE="1",
        COLUMNS="120",
    )
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def train_py(data_dir: Path, model: str, epochs: int, batches: int | None, run_dir: str, *extra: str) -> list[str]:
    """``python train.py`` with its defaults, on MNIST in batches of 100, without label smoothing (the
    reference's objective), then the ``extra`` overrides."""
    return [
        str(ROOT / "train.py"),
        "dataset=mnist",
        f"paths.data_dir={data_dir}",
        "dataset.batch_size=100",
        *MODELS[model],
        f"trainer.max_epochs={epochs}",
        f"trainer.limit_batches={batches or 'null'}",  # per split: validation's 24 and test's 40 stay whole
        "trainer.label_smoothing=0",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def keep_freed_memory_env() -> dict[str, str]:
    """glibc's environment variables for the allocator settings trainlab makes with ``mallopt``
    (``trainlab.devices.keep_freed_memory``), for the hand-written loops."""
    from trainlab.devices import MMAP_THRESHOLD, TRIM_THRESHOLD

    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def run_variant(variant: str, model: str, args: argparse.Namespace, env: dict[str, str]) -> Timing:
    batches = args.cnn_batches if model == "cnn" else None
    with tempfile.TemporaryDirectory(prefix="trainlab-bench-") as run_dir:
        if variant.startswith("trainlab"):
            extra = TRAINLAB_OPTIONS.get(variant, [])
            return timed_run(
                [sys.executable, *train_py(args.data_dir, model, args.epochs, batches, run_dir, *extra)], env
            )
        limit = ["--batches", str(batches)] if batches else []
        bf16 = ["--bf16"] if variant.endswith("_bf16") else []
        return timed_run(
            [
                sys.executable,
                str(HAND_WRITTEN),
                variant.removesuffix("_default_malloc").removesuffix("_bf16"),
                f"--model={model}",
                f"--epochs={args.epochs}",
                f"--data-dir={args.data_dir}",
                *limit,
                *bf16,
            ],
            env if variant in DEFAULT_ALLOCATOR else env | keep_freed_memory_env(),
        )


# -- start-up ------------------------------------------------------------------------------------------
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \|( *)([\w.]+)")
DEPENDENCIES = ("torch", "torchvision", "torchmetrics", "hydra", "omegaconf", "tensorboard")


def import_times(lines: list[str]) -> dict[str, float]:
    """Seconds of importing, from ``python -X importtime``'s lines, by whom they are for: each module's own
    time counts for the innermost of its importers (or itself) in ``DEPENDENCIES`` (scipy for torchmetrics,
    numpy for torch), else for the outermost one that is not trainlab's ("other": rich, PIL, the standard
    library...); trainlab's own modules count as ``trainlab``."""
    waiting: list[tuple[int, tuple]] = []  # importtime lists a module after the ones it imported
    for line in lines:
        if match := IMPORT_LINE.match(line):
            depth, children = len(match[2]) // 2, []
            while waiting and waiting[-1][0] > depth:
                children.insert(0, waiting.pop()[1])
            waiting.append((depth, (match[3], int(match[1]) / 1e6, children)))
    times: dict[str, float] = defaultdict(float)

    def visit(node: tuple, owner: str | None) -> None:
        name, seconds, children = node
        package = name.split(".")[0]
        owner = package if package in DEPENDENCIES else owner or (None if package == "trainlab" else "other")
        times[owner or "trainlab"] += seconds
        for child in children:
            visit(child, owner)

    for _, node in waiting:
        visit(node, None)
    return times


def startup(args: argparse.Namespace, env: dict[str, str], repeats: int = 3) -> dict[str, float]:
    """Seconds from starting ``python train.py`` (a one-batch MLP run, under ``-X importtime``) to its first
    step, measured to the end of its first epoch (the step, one validation batch, the first checkpoint),
    split into: the interpreter's own start (``python -c pass``), importing the dependencies
    (``import_times`` of the modules imported before the first step) and trainlab's own work (the rest: its
    modules, composing and printing the config, building data, model and trainer, the first step); and from
    there to exit (checkpoint writes, the test, pictures, summary, shutting down). The best of ``repeats``."""
    runs = []
    for _ in range(repeats):
        interpreter = timed_run([sys.executable, "-c", "pass"], env).process_s
        with tempfile.TemporaryDirectory(prefix="trainlab-bench-") as run_dir:
            one_batch = train_py(args.data_dir, "mlp", 1, 1, run_dir)
            timing = timed_run([sys.executable, "-X", "importtime", *one_batch], env)
        first_step = timing.epoch_ends[0]
        imports = import_times([line for at, line in timing.lines if at <= first_step])
        imports.pop("trainlab", None)  # its modules are trainlab's own work
        own = first_step - interpreter - sum(imports.values())
        runs.append(
            {
                "interpreter": interpreter,
                **imports,
                "trainlab": own,
                "first_step": first_step,
                "to_exit": timing.process_s - first_step,
            }
        )
    return min(runs, key=lambda run: run["first_step"])


# -- the report ----------------------------------------------------------------------------------------
def best(timings: list[Timing], measure: str) -> float:
    """The fastest round: other jobs on the machine only ever add time."""
    return min(getattr(t, measure) for t in timings)


def median_ratio(timings: list[Timing], baseline: list[Timing], measure: str = "epoch_s") -> float:
    """The median over rounds of each round's ratio: the variants of a round ran one after the other, under
    the same load."""
    return statistics.median(
        getattr(t, measure) / getattr(b, measure) for t, b in zip(timings, baseline, strict=True)
    )


def model_section(model: str, args: argparse.Namespace, runs: dict[str, list[Timing]]) -> list[str]:
    reference = runs["reference"]
    images = min(54_000, args.cnn_batches * 100) if model == "cnn" and args.cnn_batches else 54_000
    lines = [
        f"### {model.upper()}: {images:,} training images per epoch, {args.epochs} epochs per process",
        "",
        "| variant | epoch (s) | vs (r) | vs (r) in each round | process (s) | vs (r) | test acc |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for variant, timings in runs.items():
        per_round = ", ".join(f"{t.epoch_s / r.epoch_s:.2f}" for t, r in zip(timings, reference, strict=True))
        lines.append(
            f"| {VARIANTS[variant]} | {best(timings, 'epoch_s'):.3f} | {median_ratio(timings, reference):.3f}x | "
            f"{per_round} | {best(timings, 'process_s'):.2f} | "
            f"{median_ratio(timings, reference, 'process_s'):.3f}x | {timings[-1].test_acc:.4f} |"
        )
    return [*lines, "", *targets(model, runs), ""]


def targets(model: str, runs: dict[str, list[Timing]]) -> list[str]:
    """The speed targets of trainlab (medians of the rounds' ratios), met or not (none without the variants
    they compare)."""
    name = model.upper()

    def ratio(variant: str, baseline: str, measure: str = "epoch_s") -> float:
        return median_ratio(runs[variant], runs[baseline], measure)

    checks = []
    if "trainlab" in runs:
        epoch, process = ratio("trainlab", "reference"), ratio("trainlab", "reference", "process_s")
        checks += [
            (f"{name} epoch <= 1.02x the reference loop (r): {epoch:.3f}x", epoch <= 1.02),
            (f"{name} process <= 1.05x the reference loop (r): {process:.3f}x", process <= 1.05),
        ]
        if model == "mlp" and "textbook" in runs:
            speedup = 1 / ratio("trainlab", "textbook")
            checks.append((f"MLP epoch >= 3x faster than the textbook loop (c): {speedup:.1f}x", speedup >= 3))
        if "lightning" in runs:
            speedup = 1 / ratio("trainlab", "lightning")
            checks.append((f"{name} epoch faster than Lightning (d): {speedup:.2f}x", speedup > 1))
    if "trainlab_auto" in runs and "reference_bf16" in runs:
        versus_bf16 = ratio("trainlab_auto", "reference_bf16")
        checks.append(
            (
                f"{name} epoch, precision auto, <= 1.02x the bf16 reference loop (r16): {versus_bf16:.3f}x",
                versus_bf16 <= 1.02,
            )
        )
        speedup = 1 / ratio("trainlab_auto", "reference")
        checks.append(
            (
                f"{name} epoch, precision auto, >= 1.7x faster than the fp32 reference loop (r): {speedup:.2f}x",
                speedup >= 1.7,
            )
            if model == "cnn"
            else (
                f"(no target) MLP epoch, precision auto, against the fp32 reference loop (r): {speedup:.2f}x faster",
                True,
            )
        )
        if "trainlab" in runs:
            loss = (runs["trainlab"][-1].test_acc - runs["trainlab_auto"][-1].test_acc) * 100
            checks.append(
                (
                    f"{name} test accuracy, precision auto, within 0.2 points of fp32 (a): {-loss:+.2f} points",
                    loss <= 0.2,
                )
            )
    return [f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in checks]


def startup_section(times: dict[str, float]) -> list[str]:
    imports = [name for name in (*DEPENDENCIES, "other") if name in times]
    return [
        "### Start-up: `python train.py dataset=mnist ...` to its first step (MLP, data cached; best of 3)",
        "",
        "Measured to the end of a first epoch of one batch: the step, one validation batch and the first "
        "checkpoint.",
        "",
        "| part | s |",
        "| --- | ---: |",
        f"| the interpreter's start (`python -c pass`) | {times['interpreter']:.2f} |",
        *(f"| importing {name} | {times[name]:.2f} |" for name in imports),
        f"| **importing dependencies, in all** | **{sum(times[name] for name in imports):.2f}** |",
        f"| **trainlab's own work** (its modules, composing and printing the config, building data, model "
        f"and trainer, the first epoch of one batch) | **{times['trainlab']:.2f}** |",
        f"| process start to the first step | {times['first_step']:.2f} |",
        f"| then to exit (checkpoints, the test, pictures, summary, shutting down) | {times['to_exit']:.2f} |",
        "",
        f"- {'met' if times['trainlab'] <= 0.5 else 'NOT met'}: trainlab's own work <= 0.5 s: "
        f"{times['trainlab']:.2f} s",
        "",
    ]


def machine(threads: int | None) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores, {threads or 'default'} torch threads per process"


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def write_section(path: Path, text: str, heading: str) -> None:
    """Replace a benchmark's section of ``path`` (from its ``heading`` to the next ``## `` heading) with
    ``text``, keeping the sections other benchmarks write."""
    document = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    text = text.rstrip("\n") + "\n\n"
    if pattern.search(document):
        document = pattern.sub(lambda _: text, document, count=1)
    else:
        document = document.rstrip("\n") + "\n\n" + text
    path.write_text(document.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train_speed.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets", help="holds MNIST/raw/"
    )
    parser.add_argument(
        "--models", nargs="*", choices=list(MODELS), default=list(MODELS), help="none: the start-up only"
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=5, help="per process; the first is warm-up (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--cnn-batches", type=int, default=100, help="training batches per CNN epoch (default 100; 0: all 540)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (OMP_NUM_THREADS)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up timing")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/train_speed.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        report = bench(args, command)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_section(args.output, report, section(args.threads))
    print(f"written to the {section(args.threads)!r} section of {args.output}", file=sys.stderr)
    return 0


def bench(args: argparse.Namespace, command: str) -> str:
    """Run every round and return the report as Markdown."""
    args.data_dir = args.data_dir.resolve()
    if not (args.data_dir / "MNIST" / "raw").is_dir():
        raise BenchError(
            f"no MNIST files under {args.data_dir} (expected {args.data_dir}/MNIST/raw/); pass --data-dir"
        )
    if args.epochs < 2:
        raise BenchError("need at least 2 epochs for a steady-state epoch time; pass --epochs 2 or more")
    if 0 < args.cnn_batches < 24:
        raise BenchError("--cnn-batches must be 0 (all) or at least 24, so that the validation stays whole")
    variants = ["reference"] + [v for v in args.variants if v != "reference"]  # the baseline of every ratio
    if "lightning" in variants and importlib.util.find_spec("lightning") is None:
        variants.remove("lightning")
        print('skipping (d): Lightning is not installed (pip install -e ".[bench]")', file=sys.stderr)
    env = environment(args.threads)
    load_before = load_average()
    runs: dict[str, dict[str, list[Timing]]] = {model: defaultdict(list) for model in args.models}
    for round_ in range(args.repeats):
        for model in args.models:
            chosen = [v for v in variants if ONLY.get(v, model) == model]
            for variant in chosen[round_ % len(chosen) :] + chosen[: round_ % len(chosen)]:
                timing = run_variant(variant, model, args, env)
                runs[model][variant].append(timing)
                print(
                    f"round {round_ + 1} {model} {variant}: {timing.epoch_s:.3f} s/epoch, "
                    f"{timing.process_s:.2f} s process",
                    file=sys.stderr,
                )
    startup_times = None if args.no_startup else startup(args, env)
    lines = [
        section(args.threads),
        "",
        f"Written by `{command}` on {datetime.now():%Y-%m-%d %H:%M}: {machine(args.threads)}; load average "
        f"{load_before} before, {load_average()} after (1/5/15 min). {args.repeats} rounds; the tables show "
        "each variant's best round, its ratios to (r) as the median of the rounds' ratios, and `vs (r) in each "
        "round` how much the epoch ratio varies.",
        "",
        *__doc__[__doc__.index("Every variant") :].strip().splitlines(),
        "",
    ]
    for model in args.models:
        lines += model_section(model, args, {v: runs[model][v] for v in variants if runs[model][v]})
    if startup_times:
        lines += startup_section(startup_times)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
