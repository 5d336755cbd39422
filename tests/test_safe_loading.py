"""Crafted checkpoint files: predict, export and serve refuse a pickle that would run code with one line,
without unpickling it (the victim file keeps its content, no file is created, no command runs). Crafted
configs and weights inside a clean file: tests/test_hostile_checkpoints.py."""

import os
import pickle

import pytest
import torch
from conftest import cli_main


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


def test_pickle_payloads_are_refused_unread(digits_run, tmp_path, victim):
    bare = tmp_path / "bare.ckpt"
    bare.write_bytes(pickle.dumps({"model": Payload(tmp_path / "created")}))
    assert_refused_everywhere(str(bare), tmp_path, victim, "bare pickle")

    state = torch.load(digits_run[0] / "checkpoints" / "best.ckpt", weights_only=True)
    state["input_spec"] = Payload(tmp_path / "created")
    zipped = tmp_path / "zipped.ckpt"
    torch.save(state, zipped)
    assert_refused_everywhere(str(zipped), tmp_path, victim, "could run code")
