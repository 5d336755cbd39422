"""``logger=csv``: ``metrics.csv`` in the run dir, one row per epoch (as Lightning's ``CSVLogger``), and a
last row with the test metrics. Readable by anything: ``pandas.read_csv(run_dir / "metrics.csv")``."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from trainlab.loggers import Logger, RunInfo

FILE = "metrics.csv"


class CSVLogger(Logger):
    """Writes ``metrics.csv``: columns ``epoch``, ``step``, then every metric by name; a metric first seen
    later (the test metrics) adds its column, and the file is written again whole, atomically."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.rows: list[dict[str, Any]] = []

    def start(self, run: RunInfo) -> None:
        """A run that goes on in its own run dir (``ckpt_path=auto``) keeps the rows of the steps its checkpoint
        holds, and drops those that the stopped attempt wrote after it."""
        self.path = Path(run.run_dir) / FILE
        if self.path.is_file():
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= run.resumed_step]
            self.rows = [{key: value for key, value in row.items() if value != ""} for row in kept]

    def log_epoch(self, metrics: dict[str, float], epoch: int, step: int) -> None:
        self.rows.append({"epoch": epoch, "step": step, **metrics})
        self._write()

    def log_test(self, metrics: dict[str, float], step: int) -> None:
        epoch = self.rows[-1]["epoch"] if self.rows else 0
        self.rows.append({"epoch": epoch, "step": step, **metrics})
        self._write()

    def _write(self) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        temporary = self.path.with_name(f".{FILE}.tmp")
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(temporary, self.path)
