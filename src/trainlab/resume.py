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
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from trainlab import checkpoint, settings, stored_config
from trainlab.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

MISSING = object()  # a key that a config does not have


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
    state = checkpoint.load(path)
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
