"""Where a training step's time goes: trainlab's epoch loop (``Trainer._train_epoch``) against the reference
loop's steps (``hand_written.py``: forward, cross-entropy, backward, fused Adam, the loss summed), in one
process, on the same MNIST batches, the two taking turns in chunks of ``--steps`` steps.

    python benchmarks/step_profile.py --threads 2 --model mlp
    python benchmarks/step_profile.py --threads 1 --model cnn --precision bf16

Prints, per step: the median wall and CPU time of each over the chunks (their ratio within each chunk, which
ran under the same load), the ATen operators each runs (torch.profiler) and the Python calls each makes
(``sys.setprofile``): counts that do not depend on the machine's load, and where the two differ; then the
functions of trainlab's loop by their own CPU time (cProfile over one chunk). The chunk's end (the training
metrics computed, the progress bar closed) counts in trainlab's figures: once an epoch in a real run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import cProfile
import itertools
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(args: argparse.Namespace):
    """trainlab's run for the benchmark's network on MNIST (batches of 100, no label smoothing), prepared as
    ``Trainer.fit`` prepares it, and what its epoch loop needs."""
    from hand_written import train_epoch
    from hydra import compose, initialize_config_dir
    from train_speed import MODELS

    from trainlab import checkpoint, devices
    from trainlab.callbacks import FitContext
    from trainlab.loggers import Loggers
    from trainlab.preemption import Preemption
    from trainlab.run import build as build_run
    from trainlab.state import TrainingState

    overrides = [
        "dataset=mnist",
        f"paths.data_dir={args.data_dir}",
        "dataset.batch_size=100",
        "trainer.label_smoothing=0",
        f"trainer.precision={args.precision}",
        f"trainer.num_threads={args.threads}",
        f"trainer.limit_batches={args.steps}",
        "~logger",
        *MODELS[args.model],
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run = build_run(cfg)
    trainer, data = run.trainer, run.data
    devices.configure_torch(args.threads, False)
    trainer.autocast = devices.autocast(
        devices.resolve_precision(trainer.precision, trainer.device, run.model), trainer.device
    )
    channels_last = devices.use_channels_last(trainer.channels_last, run.model, trainer.device)
    model = devices.prepare_model(run.model, trainer.device, channels_last, False)
    data.to(trainer.device, channels_last=channels_last)
    state = TrainingState(
        model, run.optimizer, None, "epoch", torch.amp.GradScaler("cpu", enabled=False), {}, {}, "", "val/loss"
    )
    run_dir = Path(tempfile.mkdtemp(prefix="step-profile-"))
    context = FitContext(model, data, trainer.monitor, Loggers(()), run_dir, trainer.autocast, state.loop)
    checkpoints = checkpoint.RunCheckpoints(run_dir, trainer.monitor)
    preemption = Preemption(False, trainer.log_every_n_steps)

    def trainlab(epoch: int) -> None:
        state.loop.epoch, state.loop.batch_in_epoch = epoch, 0
        trainer._train_epoch(state, model, data, context, preemption, checkpoints)

    reference_model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(reference_model.parameters(), lr=1e-3, fused=True)
    autocast = trainer.autocast

    def reference(epoch: int) -> None:  # hand_written.fit's steps
        batches = itertools.islice(data.train_batches(epoch), args.steps)
        train_loss, _ = train_epoch(reference_model, optimizer, batches, autocast)
        train_loss.item()

    return {"reference": reference, "trainlab": trainlab}


def timings(loops: dict, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """ms per step of each loop, wall and CPU, chunk by chunk; the loops take turns, in alternating order."""
    times = {name: {"wall": [], "cpu": []} for name in loops}
    for chunk in range(args.chunks + 1):  # the first: warm-up
        for name in list(loops)[:: 1 if chunk % 2 else -1]:
            wall, cpu = time.perf_counter(), time.process_time()
            loops[name](chunk)
            if chunk:
                times[name]["wall"].append((time.perf_counter() - wall) / args.steps * 1000)
                times[name]["cpu"].append((time.process_time() - cpu) / args.steps * 1000)
    return times


def counts(loop, epoch: int, steps: int) -> tuple[collections.Counter, collections.Counter]:
    """ATen operators and Python calls of one chunk, per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        loop(epoch)
    operators = collections.Counter(
        {e.key: e.count / steps for e in profiled.key_averages() if e.key.startswith("aten::")}
    )
    calls: collections.Counter = collections.Counter()

    def count(frame, event, arg) -> None:
        if event == "call":
            calls[f"{frame.f_code.co_filename.split('site-packages/')[-1]}:{frame.f_code.co_name}"] += 1 / steps
        elif event == "c_call":
            calls[f"(C) {getattr(arg, '__qualname__', arg)}"] += 1 / steps

    sys.setprofile(count)
    try:
        loop(epoch + 1)
    finally:
        sys.setprofile(None)
    return operators, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)"
    )
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--steps", type=int, default=100, help="steps per chunk")
    parser.add_argument("--chunks", type=int, default=16, help="chunks of each loop, taking turns")
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with (
        open(os.devnull, "w") as nowhere,
        contextlib.redirect_stdout(nowhere),
        contextlib.redirect_stderr(nowhere),
    ):
        loops = build(args)  # trainlab's progress bar draws as in a terminal, here into nothing
        times = timings(loops, args)
        operators, calls = zip(
            *(counts(loop, 10_000 + 10 * i, args.steps) for i, loop in enumerate(loops.values())), strict=True
        )
        profiler = cProfile.Profile(time.process_time)  # CPU time: what other jobs do not change
        profiler.runcall(loops["trainlab"], 20_000)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{args.model.upper()}, batches of 100, {args.threads} threads, precision {args.precision}; {args.chunks} chunks of {args.steps} steps each; load average {load}"
    )
    for measure in ("wall", "cpu"):
        ref, ours = (statistics.median(times[name][measure]) for name in loops)
        ratios = [o / r for o, r in zip(times["trainlab"][measure], times["reference"][measure], strict=True)]
        print(
            f"  {measure:4} ms per step: reference {ref:.3f}, trainlab {ours:.3f} ({ours - ref:+.3f}); trainlab / reference per chunk: median {statistics.median(ratios):.3f}, {min(ratios):.2f}-{max(ratios):.2f}"
        )
    for what, (ref, ours) in (("ATen operators", operators), ("Python calls", calls)):
        print(
            f"  {what} per step: reference {sum(ref.values()):.1f}, trainlab {sum(ours.values()):.1f}; where they differ most:"
        )
        keys = sorted(set(ref) | set(ours), key=lambda k: -abs(ours[k] - ref[k]))
        print("    " + ", ".join(f"{k} {ours[k] - ref[k]:+.2f}" for k in keys[:12]))
    print("  trainlab's loop, functions by own time over one chunk (cProfile):")
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:15]
    for (filename, line, function), (_, calls_, own, cumulative, _) in rows:
        print(
            f"    {own * 1000 / args.steps:7.3f} ms/step own, {cumulative * 1000 / args.steps:7.3f} cumulative, {calls_ / args.steps:5.2f} calls/step  {filename.split('site-packages/')[-1]}:{line} {function}"
        )


if __name__ == "__main__":
    main()
