"""Hyper-parameter search with current Optuna, as a Hydra sweeper (``hparams_search=optuna``; Hydra finds it
through hydra_plugins/trainlab_optuna_sweeper). The official hydra-optuna-sweeper pins optuna<3, and its SQLite
storage fails with SQLAlchemy 2.

The search space is written in Hydra's sweep syntax, in ``hydra.sweeper.params`` or on the command line:
``optimizer.lr=tag(log,interval(1e-4,1e-1))``, ``dataset.batch_size=32,64,128``. Each round asks the study
for ``n_jobs`` trials, launches them as Hydra jobs through the configured launcher (basic, joblib,
submitit...) and tells the study how they ended: the value the task returned, pruned, or failed. A failed
trial does not stop the search; the command exits non-zero at the end if any did. The study lives in
``storage``, so the same command run again continues it until it holds ``n_trials`` finished trials.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from trainlab.sweeps.summary import first_line

log = logging.getLogger(__name__)

DIRECTIONS = {"min": optuna.study.StudyDirection.MINIMIZE, "max": optuna.study.StudyDirection.MAXIMIZE}


class SweepError(CompactHydraException):
    """Shown by Hydra as one line, with exit code 1."""


class OptunaSearch:
    """What ``hydra_plugins.trainlab_optuna_sweeper.OptunaSweeper`` does. Args (conf/hydra/sweeper/optuna.yaml):
    study_name, storage: where the study lives (an Optuna storage URL).
    n_trials: the finished (complete, pruned or failed) trials the study should hold.
    n_jobs: trials launched at once.
    seed: the sampler's seed; offset by the number of trials already in the study, so that a resumed
        search does not repeat the points it started with.
    sampler: an Optuna sampler class, completed with the seed.
    params: the search space, ``{"optimizer.lr": "tag(log,interval(1e-4,1e-1))", ...}``; sweeps given on the
        command line are added to it, and plain overrides there take a key out of it.
    """

    def __init__(
        self,
        study_name: str,
        storage: str,
        n_trials: int,
        n_jobs: int,
        seed: int,
        sampler: Callable[..., optuna.samplers.BaseSampler],
        params: dict[str, str],
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ):
        if not storage:
            raise SweepError("hydra.sweeper.storage must be an Optuna storage URL, e.g. sqlite:///study.db")
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs, self.seed = n_trials, max(1, n_jobs), seed
        self.make_sampler, self.params = sampler, dict(params)
        self.config, self.config_loader = config, hydra_context.config_loader
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.direction = DIRECTIONS[config.trainer.monitor_mode]

    def sweep(self, arguments: list[str]) -> None:
        params = [f"{key}={value}" for key, value in self.params.items()]
        overrides = OverridesParser.create(config_loader=self.config_loader).parse_overrides(params + arguments)
        by_key = {o.get_key_element(): o for o in overrides}  # the command line's win over params
        if "cv.fold" in by_key and by_key["cv.fold"].is_sweep_override():  # conf/cv/kfold.yaml's sweep
            raise SweepError(
                "cv=kfold sweeps the folds, which a search would pick as a hyper-parameter: drop cv=kfold"
            )
        space = {key: distribution(o) for key, o in by_key.items() if o.is_sweep_override()}
        fixed = [o.input_line for o in by_key.values() if not o.is_sweep_override()]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = self.load_study(fixed)
        study.sampler = self.make_sampler(seed=self.seed + len(study.trials))
        failed: list[int] = []
        while (remaining := self.n_trials - len(finished_trials(study))) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            jobs = [
                [*fixed, *(f"{k}={v}" for k, v in t.params.items()), f"hydra.sweeper.trial={t.number}"]
                for t in trials
            ]
            try:
                for job in jobs:  # a config error fails here, not in every trial
                    self.config_loader.load_sweep_config(self.config, job)
                results = self.launcher.launch(jobs, initial_job_idx=trials[0].number)
            except BaseException:  # a config error, a signal (trainlab.cli then exits the sweep), a launcher
                for trial in trials:  # failure: these trials did not run to the end and do not count
                    trial.set_user_attr("interrupted", True)
                    study.tell(trial, state=TrialState.FAIL)
                raise
            states = [tell(study, trial, result) for trial, result in zip(trials, results, strict=True)]
            failed += [t.number for t, state in zip(trials, states, strict=True) if state == TrialState.FAIL]
        log_best(study, self.config.trainer.monitor)
        if failed:
            raise SweepError(
                f"{len(failed)} trial(s) failed ({', '.join(map(str, failed))}); the others are in the study. "
                f"See {sweep_dir / 'summary.md'}"
            )

    def load_study(self, fixed: list[str]) -> optuna.Study:
        """Create the study, or load it to continue it if it exists with the same direction and overrides."""
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, direction=self.direction, load_if_exists=True
        )
        mode = self.config.trainer.monitor_mode
        if study.direction != self.direction:
            raise SweepError(
                f"study {self.study_name} in {self.storage} was created to {study.direction.name.lower()}, but "
                f"trainer.monitor_mode={mode}; use a new hydra.sweeper.study_name or the study's mode"
            )
        stored = study.user_attrs.get("overrides")
        if stored is None:
            study.set_user_attr("overrides", sorted(fixed))
        elif stored != sorted(fixed):
            raise SweepError(
                f"study {self.study_name} in {self.storage} was run with the overrides {' '.join(stored)}; continue "
                f"it with the same ones, or start another with hydra.sweeper.study_name=<new name>"
            )
        if study.trials:
            log.info(
                "continuing study %s: %d of %d trials done",
                self.study_name,
                len(finished_trials(study)),
                self.n_trials,
            )
        return study


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """A sweep as an Optuna distribution. A discrete sweep (``a,b,c``, ``choice(...)``, ``range(...)``) samples
    among the values a grid would run; ``interval(low, high)`` samples in between, log-uniformly when tagged
    ``tag(log, interval(...))``, integers when both ends are."""
    if override.is_discrete_sweep():
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    sweep = override.value()
    log_scale = "log" in sweep.tags
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return optuna.distributions.IntDistribution(sweep.start, sweep.end, log=log_scale)
    return optuna.distributions.FloatDistribution(sweep.start, sweep.end, log=log_scale)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards ``n_trials``: all that ended, except those cut short by an interrupt."""
    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    return [t for t in ended if not t.user_attrs.get("interrupted")]


def tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> TrialState:
    """Record how the trial's job ended: its value, pruned, or failed (with the error's first line)."""
    if result.status == JobStatus.COMPLETED:
        value = result.return_value
        if value is not None and math.isfinite(value):
            study.tell(trial, value)
            return TrialState.COMPLETE
        trial.set_user_attr("error", f"the job returned {value}, not a number")
    else:
        error = result._return_value  # the exception; JobReturn.return_value would raise it
        if isinstance(error, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        trial.set_user_attr("error", first_line(error))
    study.tell(trial, state=TrialState.FAIL)
    return TrialState.FAIL


def log_best(study: optuna.Study, monitor: str) -> None:
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if completed:
        best = study.best_trial
        params = " ".join(f"{k}={v}" for k, v in best.params.items())
        log.info(
            "best trial %d of %d: %s=%.4g with %s", best.number, len(study.trials), monitor, best.value, params
        )
