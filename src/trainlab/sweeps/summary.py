"""The results table of a sweep.

``SweepSummary`` is a Hydra callback (``hydra.callbacks`` in conf/train.yaml). After every job it writes
``job.json`` into the job's run dir and rebuilds ``summary.csv`` and ``summary.md`` in the sweep dir from all
of them, so a sweep that dies midway still leaves its table. The table is printed when the command exits,
not in ``on_multirun_end``: Hydra skips that hook when a job failed (its sweepers raise the first failure
after the batch, which is also what makes the command exit non-zero).
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

import trainlab.resolvers  # noqa: F401  (job processes of launchers resolve hydra.sweep.subdir with it)

JOB_FILE = "job.json"
STATUS_ORDER = {"ok": 0, "pruned": 1, "failed": 2}


class SweepSummary(Callback):
    """Keeps ``summary.csv`` / ``summary.md`` of the sweep dir up to date, one row per job, best first."""

    def __init__(self) -> None:
        self.job_started = time.perf_counter()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.register(print_summary, Path(config.hydra.sweep.dir), since=time.time())

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.job_started = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        # A failed job keeps its exception here; JobReturn.return_value would raise it.
        error = job_return._return_value if job_return.status == JobStatus.FAILED else None
        record = {
            "job": config.hydra.job.num,
            "overrides": list(job_return.overrides),
            "status": job_status(error),
            "error": first_line(error),
            "monitor": config.trainer.monitor,
            "monitor_mode": config.trainer.monitor_mode,
            "wall_time_s": round(time.perf_counter() - self.job_started, 2),
        }
        write_atomically(Path(config.hydra.runtime.output_dir) / JOB_FILE, json.dumps(record, indent=2) + "\n")
        from trainlab.sweeps import groups  # which imports this module's table helpers

        sweep_dir = Path(config.hydra.sweep.dir)
        groups.write_pictures(sweep_dir, write_summary(sweep_dir))  # groups.png, the grouped table in TensorBoard
        if record["status"] == "ok":  # TensorBoard's HParams dashboard: the sweep's settings and metrics
            from trainlab.sweeps.tensorboard import write_experiment

            write_experiment(sweep_dir, config)


def job_status(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    from optuna import TrialPruned  # only needed once something went wrong

    return "pruned" if isinstance(error, TrialPruned) else "failed"


def first_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def collect_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job under ``sweep_dir`` (its ``job.json`` and, if it succeeded, its ``metrics.json``),
    ranked: succeeded jobs by their monitored value, then pruned ones, then failed ones."""
    rows = []
    for job_file in sweep_dir.rglob(JOB_FILE):
        row = json.loads(job_file.read_text())
        metrics_file = job_file.with_name("metrics.json")
        metrics = json.loads(metrics_file.read_text()) if row["status"] == "ok" and metrics_file.exists() else {}
        row["best_epoch"] = metrics.get("best_epoch")
        row["best_score"] = metrics.get("best_score")
        row["test"] = {k: v for k, v in metrics.items() if k.startswith("test/")}
        row["val"] = {k: v for k, v in metrics.items() if k.startswith("val/")}  # at the best epoch
        row["run_dir"] = str(job_file.parent.relative_to(sweep_dir))
        rows.append(row)

    def rank_key(row: dict) -> tuple:
        score = row["best_score"]
        signed = float("inf") if score is None else (score if row["monitor_mode"] == "min" else -score)
        return STATUS_ORDER[row["status"]], signed, row["job"]

    return sorted(rows, key=rank_key)


def table(rows: list[dict[str, Any]], full: bool) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary. ``full`` (the CSV) has every override, the error and the run dir
    in columns of their own; otherwise (the printed and Markdown tables) the overrides that all jobs share
    are left out (``common_overrides``) and the error follows the status."""
    monitor = rows[0]["monitor"]
    test_keys = sorted({key for row in rows for key in row["test"]})
    common = [] if full else common_overrides(rows)
    header = ["rank", "job", "overrides", "status", *(["error"] if full else [])]
    header += ["best_epoch", monitor, *test_keys, "wall_time_s", *(["run_dir"] if full else [])]
    cells = []
    for rank, row in enumerate(rows, 1):
        status = (
            [row["status"], row["error"]] if full else [": ".join(filter(None, [row["status"], row["error"]]))]
        )
        cells.append(
            [
                str(rank),
                str(row["job"]),
                " ".join(o for o in row["overrides"] if o not in common),
                *status,
                fmt(row["best_epoch"], full),
                fmt(row["best_score"], full),
                *(fmt(row["test"].get(key), full) for key in test_keys),
                fmt(row["wall_time_s"], full),
                *([row["run_dir"]] if full else []),
            ]
        )
    return header, cells


def common_overrides(rows: list[dict[str, Any]]) -> list[str]:
    shared = set.intersection(*(set(row["overrides"]) for row in rows))
    return [o for o in rows[0]["overrides"] if o in shared] if len(rows) > 1 else []


def fmt(value: Any, full: bool) -> str:
    """Numbers as they are for the CSV (``full``), shortened for people."""
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) and not full else str(value)


def title(rows: list[dict[str, Any]], sweep_dir: Path) -> str:
    counts = ", ".join(f"{sum(row['status'] == status for row in rows)} {status}" for status in STATUS_ORDER)
    ranking = f"{rows[0]['monitor']} ({rows[0]['monitor_mode']})"
    return f"sweep {sweep_dir}: {len(rows)} jobs ({counts}), ranked by {ranking}"


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """(Re)write ``summary.csv``, ``summary.md`` and ``groups.csv`` from the jobs found under ``sweep_dir``."""
    from trainlab.sweeps import groups  # which imports this module's table helpers

    rows = collect_rows(sweep_dir)
    if not rows:
        return rows
    header, cells = table(rows, full=True)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *cells])
    write_atomically(sweep_dir / "summary.csv", text.getvalue())

    header, cells = table(rows, full=False)
    lines = [f"# {title(rows, sweep_dir)}", ""]
    if common := common_overrides(rows):
        lines += [f"All jobs: `{' '.join(common)}`", ""]
    lines += [markdown_row(header), markdown_row(["---"] * len(header)), *map(markdown_row, cells)]
    lines += groups.write_groups(sweep_dir, rows)  # groups.csv; the grouped table where runs were repeated
    write_atomically(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def print_summary(sweep_dir: Path, since: float) -> None:
    """Rewrite the summary once all jobs are done (jobs that ran in parallel may have raced) and print it,
    if any job ended ``since`` then (the sweep may have stopped before its first job)."""
    from rich.console import Console
    from rich.table import Table

    from trainlab.sweeps import groups

    if not any(job_file.stat().st_mtime >= since for job_file in sweep_dir.rglob(JOB_FILE)):
        return
    rows = write_summary(sweep_dir)
    header, cells = table(rows, full=False)
    printed = Table(*header, title=title(rows, sweep_dir), title_justify="left")
    for row in cells:
        printed.add_row(*row)
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 200  # a log file: rather long lines than a squeezed table
    if common := common_overrides(rows):
        console.print(f"all jobs: {' '.join(common)}")
    console.print(printed)
    groups.print_groups(sweep_dir, rows, console)
    console.print(f"written to {sweep_dir / 'summary.md'}, summary.csv and groups.csv")


def write_atomically(path: Path, text: str) -> None:
    """Jobs running in parallel rewrite the same files: each writes its own temporary file, then renames."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
