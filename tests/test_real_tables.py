"""Real tables as users have them (shipped on disk by pip packages of the test extra; nothing downloaded),
trained with only their path and target: nothing lost or leaked in silence, roles found, and a checkpoint
that predicts on the training file's rows alone. Accuracy against careful baselines is measured by
``python benchmarks/real_tables.py`` (docs/benchmarks.md), not here."""

from __future__ import annotations

import logging
import re
import sys

import pandas as pd
import pytest
from conftest import ROOT, make_config, read_csv

from trainlab.predict import predict
from trainlab.run import train

sys.path.insert(0, str(ROOT / "benchmarks"))
from real_tables import TABLES, export_table

ROLES = {  # a line of each table's column report that must be there
    "titanic": [
        "| Unnamed: 0 | left out: row numbers",
        "| class | feature | text | 0% | 3 | one-hot: 3 values | 3 |",
    ],
    "seattle_weather": [
        "| date | feature | text | 0% | 1,461 | date (%Y/%m/%d): year, month, day_of_year, weekday | 4 |"
    ],
    "baseball": ["| Unnamed: 0 | left out: row numbers", "| name2 | left out: an identifier or free text"],
    "penguins_raw": [
        "| Individual ID | left out: no value in 10 training rows",
        "| Region | left out: one value in every training row",
        "| Date Egg | feature | text | 0% | 50 | date (ISO8601): year, month, day_of_year, weekday | 4 |",
        "| Comments | feature | text | 84% |",
        "| Delta 15 N (o/oo) | feature | number | 4% | 330 | standardised; missing: training mean + indicator | 2 |",
    ],
}


@pytest.mark.parametrize("name", list(ROLES))
def test_a_real_table_with_only_path_and_target(name, tmp_path, caplog):
    table = TABLES[name]
    source = export_table(name, tmp_path / "data")
    run_dir = tmp_path / "run"
    overrides = ["dataset=csv", f"dataset.path={source}", f"dataset.target={table.target}"]
    with caplog.at_level(logging.INFO):
        metrics = train(make_config(*overrides, "trainer.max_epochs=2", "trainer.num_threads=1"), run_dir)
    report = (run_dir / "columns.md").read_text()
    for line in ROLES[name]:
        assert line in report, report
    frame = pd.read_csv(source)
    labelled = int(frame[table.target].notna().sum())
    built = next(r.message for r in caplog.records if r.message.startswith("model MLP"))
    features = int(re.search(r" on (\d+) features from ", built).group(1))
    kept = sum(map(int, re.search(r"(\d+) train / (\d+) val / (\d+) test", built).groups()))
    assert f"which make {features} features" in report and metrics["epochs"] == 2
    rows = [r for r in caplog.records if "dropped" in r.message]
    if labelled < len(frame):  # baseball: rows without a salary, the only rows dropped, named with a warning
        (dropped,) = rows
        assert (
            dropped.levelno == logging.WARNING
            and f"with no value of the target {table.target!r}" in dropped.message
        )
        assert f"dropped {len(frame) - labelled} of {len(frame)} rows" in dropped.message
    else:
        assert not rows
    assert kept == labelled  # every row with a target

    # predict on the training file's rows from the checkpoint alone (the training file moved away)
    moved = source.rename(tmp_path / "rows.csv")
    output = tmp_path / "predictions.csv"
    predicted = predict(
        make_config(
            f"ckpt={run_dir}/checkpoints/best.ckpt", f"input={moved}", f"output={output}", config_name="predict"
        )
    )
    assert len(read_csv(output)) == len(frame)
    if labelled == len(frame):  # every row has its target: scored
        metric = "input/r2" if "input/r2" in predicted else "input/acc"
        assert predicted[metric] > (0.0 if metric == "input/r2" else 0.5)
