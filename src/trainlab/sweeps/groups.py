"""Repeats of one config, aggregated: the grouped table of a sweep (``groups.csv``, a table in ``summary.md``)
and its picture (``groups.png``, and the table as a TensorBoard text in ``groups/``).

Jobs whose overrides differ only in ``seed`` or ``cv.fold`` are one group: the same config trained on other
seeds or folds. A group's row has the mean and sample standard deviation of the monitored value and of every
val/ and test/ metric over its finished members; failed and pruned members are counted, not averaged in.
Everything is gathered from the job dirs (``summary.collect_rows``), so it works whichever launcher ran them.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import shutil
import statistics
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from trainlab.sweeps.summary import common_overrides, fmt, markdown_row, write_atomically

REPEAT_KEYS = ("seed", "cv.fold")  # overrides that make a repeat of the same config, not another config
GROUPS_FILE = "groups.csv"
PICTURE_FILE = "groups.png"
TENSORBOARD_DIR = "groups"  # the grouped table as a TensorBoard text, a run of its own beside the jobs'
MAX_CURVES = 8  # groups drawn in the picture, best first


def override_key(override: str) -> str:
    """``seed`` of ``seed=3`` (and of ``+seed=3`` or ``++seed=3``)."""
    return override.split("=", 1)[0].lstrip("+~")


def group_overrides(overrides: list[str]) -> list[str]:
    """What names a job's group: its overrides without the repeat keys (``seed``, ``cv.fold``)."""
    return [o for o in overrides if override_key(o) not in REPEAT_KEYS]


def group_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The groups of ``summary.collect_rows``'s rows, best mean monitor first (groups without a finished
    member last). Each has its ``overrides`` (without seed and fold), its ``members`` (rows) and the
    ``finished`` ones among them, their number ``n``, the number of the others (``failed``: failed or
    pruned), and ``stats``: ``{metric: (mean, std)}``, the std None for fewer than two values."""
    groups: dict[frozenset, dict[str, Any]] = {}
    for row in rows:
        overrides = group_overrides(row["overrides"])
        groups.setdefault(frozenset(overrides), {"overrides": overrides, "members": []})["members"].append(row)
    monitor, mode = rows[0]["monitor"], rows[0]["monitor_mode"]
    for group in groups.values():
        finished = [row for row in group["members"] if row["status"] == "ok" and row["best_score"] is not None]
        group.update(finished=finished, n=len(finished), failed=len(group["members"]) - len(finished))
        metrics = [{**row["val"], **row["test"]} for row in finished]
        names = sorted(
            {key for run in metrics for key in run} - {monitor}, key=lambda k: (k.startswith("test/"), k)
        )
        values = {monitor: [row["best_score"] for row in finished]}  # the monitor first, then val/, then test/
        values |= {key: [run[key] for run in metrics if key in run] for key in names}
        group["stats"] = {key: mean_and_std(numbers) for key, numbers in values.items()}

    def rank_key(group: dict) -> tuple:
        mean = group["stats"][monitor][0]
        return (
            mean is None,
            0.0 if mean is None else (mean if mode == "min" else -mean),
            group["members"][0]["job"],
        )

    return sorted(groups.values(), key=rank_key)


def mean_and_std(values: list[float]) -> tuple[float | None, float | None]:
    mean = statistics.fmean(values) if values else None
    return mean, statistics.stdev(values) if len(values) > 1 else None


def repeated(groups: list[dict[str, Any]]) -> bool:
    """Whether any group has several members: otherwise the grouped table only repeats the per-run one."""
    return any(len(group["members"]) > 1 for group in groups)


def write_groups(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """Write ``groups.csv``; returns the grouped table's lines for ``summary.md`` (none without repeats)."""
    groups = group_runs(rows)
    metrics = metric_names(groups)
    header = ["rank", "overrides", "n", "failed", *(f"{m}_{stat}" for m in metrics for stat in ("mean", "std"))]
    header.append("jobs")
    cells = [
        [str(rank), " ".join(group["overrides"]), str(group["n"]), str(group["failed"])]
        + [fmt(value, full=True) for metric in metrics for value in group["stats"].get(metric, (None, None))]
        + [" ".join(str(job) for job in sorted(row["job"] for row in group["members"]))]
        for rank, group in enumerate(groups, 1)
    ]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *cells])
    write_atomically(sweep_dir / GROUPS_FILE, text.getvalue())
    if not repeated(groups):
        return []
    header, cells = readable_table(groups)
    return ["", f"## {groups_title(groups, rows)}", "", *markdown_table(header, cells)]


def readable_table(groups: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The grouped table for people: overrides that every group shares left out, ``mean ± std`` cells."""
    metrics = metric_names(groups)
    common = common_overrides(groups)
    header = ["rank", "overrides", "n", "failed", *metrics]
    cells = [
        [
            str(rank),
            " ".join(o for o in group["overrides"] if o not in common),
            str(group["n"]),
            str(group["failed"]),
        ]
        + [plus_minus(*group["stats"].get(metric, (None, None))) for metric in metrics]
        for rank, group in enumerate(groups, 1)
    ]
    return header, cells


def metric_names(groups: list[dict[str, Any]]) -> list[str]:
    """Every metric of the groups, the monitor first."""
    return list(dict.fromkeys(key for group in groups for key in group["stats"]))


def markdown_table(header: list[str], cells: list[list[str]]) -> list[str]:
    return [markdown_row(header), markdown_row(["---"] * len(header)), *map(markdown_row, cells)]


def plus_minus(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return fmt(mean, full=False) + ("" if std is None else f" ± {std:.2g}")


def groups_title(groups: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    return (
        f"groups of runs that differ only in {' or '.join(REPEAT_KEYS)}: mean ± sample std over the finished "
        f"members, ranked by mean {rows[0]['monitor']} ({rows[0]['monitor_mode']})"
    )


def print_groups(sweep_dir: Path, rows: list[dict[str, Any]], console) -> None:
    """The grouped table on ``console`` (a rich Console) and where its picture is, if runs were repeated."""
    from rich.table import Table

    groups = group_runs(rows)
    if not repeated(groups):
        return
    header, cells = readable_table(groups)
    printed = Table(*header, title=groups_title(groups, rows), title_justify="left")
    for cells_of_row in cells:
        printed.add_row(*cells_of_row)
    console.print(printed)
    if (sweep_dir / PICTURE_FILE).exists():
        console.print(f"validation curves of the groups: {sweep_dir / PICTURE_FILE}")


def write_pictures(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Where runs were repeated, draw ``groups.png`` and write the grouped table as TensorBoard text. Done
    after every job, in the job's process: at the sweep's exit (``print_summary``) the interpreter can no
    longer import what they need (TensorBoard's reader starts a thread pool)."""
    groups = group_runs(rows) if rows else []
    if not repeated(groups):
        return
    draw_curves(sweep_dir / PICTURE_FILE, groups, rows[0]["monitor"])
    write_tensorboard_text(sweep_dir / TENSORBOARD_DIR, groups_title(groups, rows), *readable_table(groups))


def validation_curve(run_dir: Path, tag: str) -> list[float]:
    """The values of ``tag`` that a run logged, one per epoch, read from its TensorBoard events; none for a run
    without them (not logged to TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir / "tensorboard"
    if not folder.is_dir():
        return []
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # not a line per run about its last event file
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep all
    events.Reload()
    return [event.value for event in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def mean_curve(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per epoch, the mean and the std (0 for one value) over the curves that reached that epoch."""
    per_epoch = [
        mean_and_std([c[epoch] for c in curves if len(c) > epoch]) for epoch in range(max(map(len, curves)))
    ]
    return np.array([mean for mean, _ in per_epoch]), np.array([std or 0.0 for _, std in per_epoch])


def draw_curves(path: Path, groups: list[dict[str, Any]], monitor: str) -> bool:
    """The monitored metric per epoch of the best ``MAX_CURVES`` groups: the mean over the members that
    reached the epoch, with a band of ±1 std; False if no run logged it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    sweep_dir = path.parent
    figure, axes = plt.subplots(figsize=(8, 5), layout="constrained")
    common = common_overrides(groups)
    drawable = [group for group in groups if group["n"]][:MAX_CURVES]
    columns = 1 if len(drawable) <= 3 else 2  # of the legend
    drawn = 0
    for group in drawable:
        curves = [validation_curve(sweep_dir / row["run_dir"], monitor) for row in group["finished"]]
        curves = [curve for curve in curves if curve]
        if not curves:
            continue
        mean, std = mean_curve(curves)
        epochs = np.arange(1, len(mean) + 1)
        name = " ".join(o for o in group["overrides"] if o not in common) or "all runs"
        label = textwrap.fill(f"{name} (n={len(curves)})", 110 // columns).replace("$", r"\$")  # $: not maths
        (line,) = axes.plot(epochs, mean, marker="o", markersize=3, label=label)
        axes.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        drawn += 1
    if drawn:
        title = f"{monitor} per epoch: mean ± 1 std over each group's runs"
        if len(groups) > drawn:
            title += f" (the best {drawn} of {len(groups)} groups)"
        axes.set(xlabel="epoch", ylabel=monitor, title=title)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        figure.set_figheight(5 + 0.2 * math.ceil(drawn / columns))  # room for the legend below
        figure.legend(loc="outside lower center", ncols=columns, fontsize="small")  # covers no curve
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.png")  # jobs in parallel: each its own, renamed
        figure.savefig(temporary, dpi=120)
        os.replace(temporary, path)
    plt.close(figure)
    return bool(drawn)


def write_tensorboard_text(folder: Path, title: str, header: list[str], cells: list[list[str]]) -> None:
    """The grouped table as Markdown in TensorBoard's Text tab (a run named ``groups``). One events file,
    replaced whole each time (written beside it, then renamed, as jobs in parallel may do this at once)."""
    from torch.utils.tensorboard import SummaryWriter

    temporary = folder.with_name(f".{folder.name}.{os.getpid()}")
    with SummaryWriter(temporary) as writer:
        writer.add_text("groups", "\n".join([f"**{title}**", "", *markdown_table(header, cells)]))
    folder.mkdir(exist_ok=True)
    (written,) = temporary.glob("events.out.tfevents.*")
    os.replace(written, folder / "events.out.tfevents.groups")
    shutil.rmtree(temporary)
