"""Resuming a run from its checkpoint alone.

A checkpoint holds the fully resolved config of the run that wrote it, so resuming takes the config from
there: ``python train.py ckpt_path=<run>/checkpoints/last.ckpt`` continues that run, not one built from
today's defaults. Settings given with it are applied on top only where they do not change what the saved
state means (``settings.RESUMABLE``); any other setting that differs from the saved one is refused by name, since the
saved weights, optimizer state and best score would silently mean something else. The saved config is data:
``stored_config`` refuses it unless plain and naming allowed classes only, and checks its model against the
saved weights before anything is built.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from trainlab import checkpoint, distributed, settings, stored_config
from trainlab.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

MISSING = object()  # a key that a config does not have
AUTO = "auto"  # ckpt_path=auto: the run's own last.ckpt, where it has one


def resumable(key: str) -> bool:
    """Whether a resumed run may change ``key``: how long, where and how fast it runs, what it shows and
    logs, when early stopping gives up, and where its files are (the same data, moved); ``settings``
    declares them. Everything else (the model, the data set and its split, the optimizer and scheduler, the
    monitor and its mode, the seed...) is what the saved state was trained with."""
    return settings.among(key, settings.RESUMABLE)


def resumed_config(cfg: DictConfig, overrides: list[str] | None = None) -> DictConfig:
    """The config that continues ``cfg.ckpt_path``: the one saved in the checkpoint, with the settings the
    user changed taken from ``cfg`` where they are ``resumable``, and refused (``ConfigError``) otherwise.

    ``overrides`` are the command line's (Hydra's ``overrides.task``): only the settings they name count as
    changed, since ``cfg`` holds today's defaults for the rest. Without them (a config composed in Python),
    every setting of ``cfg`` counts: each must be resumable or equal to the saved one.
    """
    path = Path(to_absolute_path(cfg.ckpt_path))
    state = checkpoint.load(path, mmap=True)  # the config and the weights' shapes: restore reads the rest
    if not state.get("config"):
        raise CheckpointError(f"{path} holds no run config to resume with; use a checkpoint written by train.py")
    trusted = stored_config.trusted_config(state, path)
    stored_config.check_model(trusted.model, state, path)  # before a huge model is allocated for real
    resumed = OmegaConf.to_container(trusted)
    wanted = OmegaConf.to_container(cfg, resolve=True)
    if overrides is None:
        changes = [(key, None, False) for key in {**_leaves(wanted), **_leaves(resumed)} if not resumable(key)]
        changes += [(key, None, False) for key in settings.RESUMABLE]
    else:
        changes = [
            (o.key_or_group.replace("/", "."), o.input_line, o.is_delete())
            for o in OverridesParser.create().parse_overrides(overrides)
        ]
    for key, given, deleted in changes:
        new, old = _get(wanted, key), _get(resumed, key)
        if not resumable(key):
            if new is MISSING and not deleted:  # a group such as experiment= or debug=, setting keys elsewhere
                raise ConfigError(
                    f"cannot resume with {given}: it changes several settings, and a resumed run keeps those of its "
                    "checkpoint; give the ones a resumed run may change (trainer.max_epochs...) one by one"
                )
            if new != old:
                raise _refused(key, given, new, old)
        elif new is MISSING:
            _delete(resumed, key)
        else:
            _set(resumed, key, new)
    what = f"{path.name} (epoch {state['epoch']}, step {state['global_step']})"
    if path.name != "last.ckpt":
        what += f", not the last.ckpt of its run: training goes on from epoch {state['epoch']}"
    log.info("resuming from %s with the config saved in it", what)
    return OmegaConf.create(resumed)


def checkpoint_to_continue(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint a run in ``run_dir`` starts from: ``cfg.ckpt_path`` as given, or, for ``ckpt_path=auto``,
    the ``last.ckpt`` of the run already in ``run_dir`` (a named run's folder, ``outputs/runs/<run_id>``), None
    where it has none yet: then the run starts. So the same command, run again after a preemption, a requeue
    or a restart of its torchrun group, continues where the last attempt saved.

    ``ckpt_path=auto`` without a ``run_id`` is refused: its run dir would be a new one every time. A named
    run is refused too where its folder already holds a run that it does not continue (it would overwrite
    it). Under torchrun rank 0's file system answers for every rank.
    """
    ckpt_path, run_id = cfg.get("ckpt_path"), cfg.get("run_id")
    named = run_id not in (None, "")
    if named and (os.sep in str(run_id) or str(run_id) in (".", "..")):
        raise ConfigError(
            f"run_id={run_id} must be a plain name: it names the run's folder, e.g. run_id=mnist-lr3e-4"
        )
    last = checkpoint.RunCheckpoints(run_dir).last
    exists = distributed.from_main_object(last.is_file())
    if ckpt_path == AUTO:
        if not named:
            raise ConfigError(
                "ckpt_path=auto continues the run that run_id names, and none is named: add run_id=<name> (the same "
                "in every attempt), or run under SLURM or torchrun, whose job id (SLURM_JOB_ID, --rdzv_id) names it"
            )
        if not exists:
            log.info("run %s has no checkpoint yet: it starts in %s", run_id, run_dir)
            return None
        return str(last)
    if named and exists and (not ckpt_path or Path(run_dir).resolve() not in Path(ckpt_path).resolve().parents):
        raise ConfigError(
            f"run {run_id} already exists ({last}); continue it with ckpt_path=auto, or choose another run_id"
        )
    return ckpt_path


def _refused(key: str, given: str | None, new: Any, old: Any) -> ConfigError:
    """The error naming the setting: ``given`` as the user wrote it, and the value under ``key`` that differs
    from the checkpoint's (its class, where that differs)."""
    new_leaves, old_leaves = _leaves(new, key), _leaves(old, key)
    differing = [
        k for k in {**old_leaves, **new_leaves} if new_leaves.get(k, MISSING) != old_leaves.get(k, MISSING)
    ]
    first = min(differing, key=lambda k: not k.endswith("_target_"))  # the class, if it differs, says most
    was = old_leaves.get(first, MISSING)
    if given is None:
        given = f"{key}={_show(new)}" if new is not MISSING else f"no {key}"
    trained = f"{first}={_show(was)}" if was is not MISSING else f"no {first}"
    return ConfigError(
        f"cannot resume with {given}: the checkpoint was trained with {trained}, and its saved state depends on "
        "it; drop the override, or start a new run without ckpt_path"
    )


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every value in nested dicts (an empty dict, a list or a scalar is a value)."""
    if node is MISSING:
        return {}
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    leaves = {}
    for key, value in node.items():
        leaves |= _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    return leaves


def _get(node: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def _set(node: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _delete(node: dict, key: str) -> None:
    *parents, last = key.split(".")
    parent = _get(node, ".".join(parents)) if parents else node
    if isinstance(parent, dict):
        parent.pop(last, None)
