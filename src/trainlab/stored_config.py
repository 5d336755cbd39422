"""A checkpoint's config is data: what it may make trainlab build.

predict, export, serve and a resumed run (``ckpt_path=``) build objects from the config stored in a
checkpoint, so a crafted file could otherwise name any code. Before anything of it is instantiated:

- it must be plain data. It is stored resolved, so an interpolation or resolver (``${...}``, e.g.
  ``${oc.create:...}`` or ``${oc.env:HOME}``) in any key or value means the file was altered; a YAML alias
  (which could expand exponentially) likewise.
- a ``_target_`` may stand only where ``ALLOWED`` says (the model, the data set, the optimizer...), and must
  name one of the classes allowed there: found by walking the dotted name through trusted modules only (a
  module the checkpoint names is imported only if it lies in the node's packages, and attributes are
  looked up in such modules only), then compared by identity with the classes those modules define.
  ``trainlab.model.nn.Linear`` (torch's, imported by trainlab.model) or ``trainlab.callbacks.logging.
  FileHandler`` are refused, as are functions. ``_partial_`` may go with an allowed ``_target_``; any other
  Hydra key (``_args_``, ``_recursive_``...) nowhere.
- the model is built on torch's meta device, which allocates nothing, and its parameter and buffer shapes
  are compared with the stored weights (``check_model``): a config altered to ``hidden_size: 10000000``
  is refused in milliseconds instead of allocating 125 GB.

Each refusal is a one-line ``CheckpointError`` naming the file and the node.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import yaml
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trainlab.dataloader import InputSpec
from trainlab.errors import CheckpointError, TrainlabError, first_line
from trainlab.settings import among


@dataclass(frozen=True)
class Classes:
    """The classes a config node may name: subclasses of ``base`` defined in ``packages`` (each a module, or a
    package and every module under it). Classes added there later are allowed without a change here."""

    base: str  # dotted name of a class of trainlab or of its dependencies
    packages: tuple[str, ...]
    required: bool = False  # the node must name one (a run cannot do without it)


# Where a checkpoint's config may name a class, and which: a dotted config path (``*``: any key). Nowhere
# else may a ``_target_`` stand.
ALLOWED: dict[str, Classes] = {
    "model": Classes("torch.nn.Module", ("trainlab.model",), required=True),
    "dataset": Classes("trainlab.dataloader.BatchedData", ("trainlab.dataloader",), required=True),
    "augment": Classes("builtins.object", ("trainlab.dataloader.augment",)),
    "augment.ops.*": Classes("builtins.object", ("trainlab.dataloader.augment",)),
    "cv": Classes("trainlab.dataloader.folds.KFold", ("trainlab.dataloader.folds",)),
    "optimizer": Classes("torch.optim.Optimizer", ("torch.optim",), required=True),
    "scheduler": Classes(
        "torch.optim.lr_scheduler.LRScheduler", ("torch.optim.lr_scheduler", "trainlab.schedulers")
    ),
    "trainer": Classes("trainlab.trainer.Trainer", ("trainlab.trainer",), required=True),
    "callbacks.*": Classes("trainlab.callbacks.Callback", ("trainlab",)),
    "callbacks.*.pruner": Classes("optuna.pruners.BasePruner", ("optuna.pruners",)),
    "logger.*": Classes("trainlab.loggers.Logger", ("trainlab.loggers",)),
}

DOTTED = re.compile(r"(?!__)[A-Za-z_]\w*(\.(?!__)[A-Za-z_]\w*)*", re.ASCII)  # no dunder attributes


def trusted_config(state: dict[str, Any], path: str | Path) -> DictConfig:
    """The run config stored in checkpoint ``state`` (read from ``path``), refused (``CheckpointError``)
    unless it is plain data naming allowed classes only. Nothing in it is resolved or run here."""
    text = state.get("config")
    if not isinstance(text, str) or not text.strip():
        raise CheckpointError(f"{path} holds no run config; use a checkpoint written by train.py")
    try:
        if any(isinstance(token, yaml.AliasToken) for token in yaml.scan(text, Loader=yaml.SafeLoader)):
            _refuse(path, "its config has a YAML alias, which a config written by trainlab never has")
        config = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except (yaml.YAMLError, OmegaConfBaseException, ValueError, TypeError) as error:
        raise CheckpointError(f"{path} has a config that is not valid YAML ({_show(first_line(error))})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} has a config that is not a mapping; use a checkpoint written by train.py")
    _plain(config, (), path)
    _classes(config, (), path)
    for key in (key for key, classes in ALLOWED.items() if classes.required):
        if not (isinstance(config.get(key), dict) and "_target_" in config[key]):
            _refuse(path, f"its config's {key} node names no class")
    return OmegaConf.create(config)


def allowed_classes(classes: Classes) -> list[type]:
    """The classes ``classes`` allows among those of the modules imported so far (``_find`` imports the one a
    target names, if it is trusted)."""
    base = _base(classes.base)
    return [
        value
        for name, module in list(sys.modules.items())
        if isinstance(module, ModuleType) and among(name, classes.packages)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, base) and among(value.__module__, classes.packages)
    ]


def check_model(model_node: DictConfig, state: dict[str, Any], path: str | Path) -> InputSpec:
    """Build ``model_node``, sized by the checkpoint's input spec (which this returns), on torch's meta device,
    where nothing is allocated or initialised, and refuse the checkpoint unless its stored weights have every
    parameter and buffer of that model, of the same shape, and hold the values their shapes claim. A model
    that cannot be built from the node (an unexpected setting, an impossible size) is one line too."""
    from trainlab.run import build_model

    if not isinstance(state.get("input_spec"), dict):
        raise CheckpointError(f"{path} has no input spec (written by an older trainlab); train it again")
    spec = InputSpec.from_dict(state["input_spec"])
    try:
        with torch.device("meta"):
            model = build_model(OmegaConf.create({"model": model_node}), spec, pretrained=False)
    except Exception as error:  # whatever the model's constructor raises on settings it was not written for
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        if isinstance(cause, TrainlabError):
            raise cause from None
        raise CheckpointError(
            f"{path}: its config's model node does not build a model ({type(cause).__name__}: "
            f"{_show(first_line(cause))}); use a checkpoint written by train.py"
        ) from error
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{path} holds no model weights; use a checkpoint written by train.py")
    stored = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    for name in [*expected, *(name for name in stored if name not in expected)]:
        if expected.get(name) != stored.get(name):
            built, kept = (f"{d[name]}" if name in d else "none" for d in (expected, stored))
            _refuse(
                path, f"its config's model node does not fit its weights ({name}: built {built}, stored {kept})"
            )
    for name, tensor in weights.items():
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            _refuse(path, f"its weights {name} claim {tuple(tensor.shape)} but hold fewer values")
    return spec


def _plain(node: Any, where: tuple, path: str | Path) -> None:
    """Refuse any interpolation or resolver in ``node`` (at config path ``where``): in a key or a value, at
    any depth."""
    if isinstance(node, str) and "${" in node:
        _refuse(path, f"its config's {_dotted(where)} is an interpolation ({_show(node)}), {INTERPOLATION}")
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if isinstance(key, str) and "${" in key:
            _refuse(
                path,
                f"its config's {_dotted(where)} has an interpolation as a key ({_show(key)}), {INTERPOLATION}",
            )
        _plain(value, (*where, key), path)


def _classes(node: Any, where: tuple, path: str | Path) -> None:
    """Refuse any Hydra key in ``node`` (at config path ``where``) but a ``_target_`` where ``ALLOWED`` allows
    one, naming an allowed class, and its ``_partial_``, at any depth."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            _classes(item, (*where, index), path)
    if not isinstance(node, dict):
        return
    classes = next((c for pattern, c in ALLOWED.items() if _matches(pattern, where)), None)
    for key, value in node.items():
        if key == "_target_" and classes is not None:
            _check_target(value, where, classes, path)
        elif key == "_target_":
            _refuse(
                path, f"its config names a class at {_dotted(where)} ({_show(value)}), where trainlab builds none"
            )
        elif key == "_partial_" and classes is not None and isinstance(value, bool):
            continue
        elif isinstance(key, str) and len(key) > 2 and key.startswith("_") and key.endswith("_"):
            _refuse(path, f"its config's {_dotted(where)} has {key}, which no trainlab config uses")
        else:
            _classes(value, (*where, key), path)


INTERPOLATION = "which a checkpoint's config never has (it is stored resolved)"


def _check_target(target: Any, where: tuple, classes: Classes, path: str | Path) -> None:
    found = _find(target, classes.packages) if isinstance(target, str) and DOTTED.fullmatch(target) else None
    if not any(found is allowed for allowed in allowed_classes(classes)):
        base = classes.base.rpartition(".")[2]
        kind = "a class" if base == "object" else f"a {base} class"
        _refuse(
            path,
            f"its config names {_dotted(where)} class {_show(target)}, which is not {kind} of "
            f"{' or '.join(classes.packages)} (all that a checkpoint may name there)",
        )


def _find(target: str, packages: tuple[str, ...]) -> Any:
    """What the dotted ``target`` names, walked through trusted modules only: a module is imported only if it
    lies in ``packages`` (or is a package above one of them), attributes are looked up only in modules that
    lie in ``packages``, and never in a class or function. None where the walk would leave them."""
    found: Any = None
    for part in target.split("."):
        if found is not None and not isinstance(found, ModuleType):
            return None
        name = f"{found.__name__}.{part}" if found is not None else part
        if among(name, packages) or any(p.startswith(f"{name}.") for p in packages):
            try:
                found = importlib.import_module(name)
                continue
            except ModuleNotFoundError as error:
                if error.name != name:  # the module exists but cannot be imported
                    return None
        if found is None or not among(found.__name__, packages):
            return None
        found = getattr(found, part, None)
        if isinstance(found, ModuleType) and not among(found.__name__, packages):
            return None
    return found


def _base(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _matches(pattern: str, where: tuple) -> bool:
    parts = pattern.split(".")
    return len(parts) == len(where) and all(
        p == key or (p == "*" and isinstance(key, str)) for p, key in zip(parts, where, strict=True)
    )


def _dotted(where: tuple) -> str:
    return _show(".".join(map(str, where))) or "top level"


def _show(value: Any, limit: int = 100) -> str:
    """``value`` as one short printable line: a crafted file's text may hold newlines or be long."""
    text = str(value).encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse(path: str | Path, reason: str) -> None:
    raise CheckpointError(f"refused {path}: {reason}; nothing in it was run")
