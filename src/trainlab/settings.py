"""Which settings say where and how a run runs rather than what it computes: declared once, here.

Resuming (``resume``), TensorBoard's HParams and the other loggers' parameters (``outputs.flat_hparams``),
the names of a sweep's run dirs (``hydra.job.config.override_dirname.exclude_keys`` in conf/train.yaml,
through the resolver ``trainlab.unnamed_settings``) and the paths made absolute before a config is saved
(``run.prepare_config``) all read these tuples. A key names a setting or a whole node (``hydra``).
"""

from __future__ import annotations

# Where a run runs, how it is shown and logged: a resumed run may change them, they are no hyper-parameters
# and they do not name a sweep's run dirs.
RUN_ONLY = (
    "ckpt_path",
    "run_id",
    "debug_errors",
    "hydra",
    "hparams_search",
    "logger",
    "trainer.device",
    "trainer.strategy",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.log_every_n_steps",
    "dataset.download",
    "dataset.num_workers",
    "dataset.pin_memory",
    "dataset.persistent_workers",
    "callbacks.pictures",
)

# Files and folders: made absolute in the saved config (so that a checkpoint works from any folder), and
# otherwise run-only (the same data, moved, may be resumed from).
PATHS = ("paths.data_dir", "dataset.path", "dataset.root", "model.weights")

# Settings that shape the results, but which a resumed run may still change: how long it trains, when early
# stopping gives up, whether the model is compiled.
RESUMABLE_TOO = (
    "trainer.max_epochs",
    "trainer.compile",
    "callbacks.early_stopping.patience",
    "callbacks.early_stopping.min_delta",
)

NOT_HPARAMS = RUN_ONLY + PATHS
RESUMABLE = RUN_ONLY + PATHS + RESUMABLE_TOO


def among(key: str, declared: tuple[str, ...]) -> bool:
    """Whether the dotted name ``key`` is one of ``declared`` or inside one of them: a setting in a node of the
    config, a module in a package."""
    return any(key == name or key.startswith(f"{name}.") for name in declared)
