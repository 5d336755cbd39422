"""Multiruns (``python train.py -m ...``): what trainlab adds to Hydra's sweeps.

- ``summary``: ``SweepSummary``, the Hydra callback that writes a sweep's results table (``hydra.callbacks``
  in conf/train.yaml), and the functions that build it from the jobs' ``job.json`` and ``metrics.json``.
- ``threads``: each job's share of the cores when a launcher runs several at once.
- ``optuna_search``: the hyper-parameter search behind the Hydra sweeper ``hydra/sweeper=optuna``
  (src/hydra_plugins/trainlab_optuna_sweeper).
- ``optuna_pruning``: the callback that reports every epoch to the search's trial and prunes it.

The modules are imported one by one (Hydra imports the callback in every job process; Optuna only where a
search needs it), so this package imports nothing itself.
"""
