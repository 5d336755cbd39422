"""Crafted checkpoints: predict, export and serve refuse each with one line, and nothing in them runs (the
victim file keeps its content, no file is created, no command runs)."""

import os
import pickle

import pytest
import torch
import yaml
from conftest import cli_main

CRAFTS = {
    # node: what replaces it in the checkpoint's config; VICTIM / CREATED are filled in per test
    "augment-open": ("augment", {"_target_": "builtins.open", "_args_": ["VICTIM", "w"]}),
    "optimizer-touch": ("optimizer", {"_target_": "pathlib.Path.touch", "_args_": ["CREATED"]}),
    "scheduler-trainlab-function": (
        "scheduler",
        {"_target_": "trainlab.checkpoint.save", "state": {}, "path": "VICTIM"},
    ),
    "callbacks-nested": ("callbacks", {"stop": {"_target_": "os.system", "command": "echo > VICTIM"}}),
    "trainer-subprocess": ("trainer", {"_target_": "subprocess.run", "args": ["touch", "CREATED"]}),
    "dataset-open": ("dataset", {"_target_": "builtins.open", "file": "VICTIM", "mode": "w"}),
    "model-not-trainlab": ("model", {"_target_": "torch.nn.Linear", "in_features": 64, "out_features": 10}),
    "model-args": ("model", {"_target_": "trainlab.model.Linear", "_args_": [[64], 10]}),
    "model-nested": (
        "model",
        {
            "_target_": "trainlab.model.Linear",
            "input_shape": {"_target_": "pathlib.Path.touch", "self": "CREATED"},
        },
    ),
    "model-imported-name": ("model", {"_target_": "trainlab.model.Path"}),  # pathlib's, through trainlab.model
}


class Payload:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text("precious")
    return path


def craft(source, tmp_path, node: str, replacement: dict, victim) -> str:
    state = torch.load(source, weights_only=True)
    config = yaml.safe_load(state["config"])
    text = yaml.safe_dump(replacement).replace("VICTIM", str(victim)).replace("CREATED", str(tmp_path / "created"))
    config[node] = yaml.safe_load(text)
    state["config"] = yaml.safe_dump(config)
    path = tmp_path / "crafted.ckpt"
    torch.save(state, path)
    return str(path)


def assert_refused_everywhere(ckpt: str, tmp_path, victim, complaint: str) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir(exist_ok=True)
    before = sorted(tmp_path.rglob("*"))
    commands = [
        ("predict.py", f"ckpt={ckpt}", f"input={pictures}", f"output={tmp_path / 'p.csv'}"),
        ("predict.py", f"ckpt={ckpt}", f"output={tmp_path / 'm.json'}"),
        ("export.py", f"ckpt={ckpt}", f"output={tmp_path / 'm.onnx'}"),
        ("serve.py", f"ckpt={ckpt}", "port=0"),
    ]
    for command in commands:
        code, stderr = cli_main(*command)
        lines = stderr.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and complaint in lines[0], (
            command,
            stderr,
        )
    assert victim.read_text() == "precious"
    assert sorted(tmp_path.rglob("*")) == before  # nothing written: no output, no created file


@pytest.mark.parametrize("name", list(CRAFTS))
def test_crafted_config_is_refused_and_nothing_runs(digits_run, tmp_path, victim, name):
    node, replacement = CRAFTS[name]
    ckpt = craft(digits_run[0] / "checkpoints" / "best.ckpt", tmp_path, node, replacement, victim)
    assert_refused_everywhere(ckpt, tmp_path, victim, "refused")


def test_pickle_payloads_are_refused_unread(digits_run, tmp_path, victim):
    bare = tmp_path / "bare.ckpt"
    bare.write_bytes(pickle.dumps({"model": Payload(tmp_path / "created")}))
    assert_refused_everywhere(str(bare), tmp_path, victim, "bare pickle")

    state = torch.load(digits_run[0] / "checkpoints" / "best.ckpt", weights_only=True)
    state["input_spec"] = Payload(tmp_path / "created")
    zipped = tmp_path / "zipped.ckpt"
    torch.save(state, zipped)
    assert_refused_everywhere(str(zipped), tmp_path, victim, "could run code")
