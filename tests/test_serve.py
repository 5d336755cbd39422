"""serve.py as users run it: a real uvicorn process on a free port and a real HTTP client. Its answers equal
predict.py's for images and table rows, with torch (.ckpt) and ONNX Runtime (.onnx) alike; bad requests are
4xx JSON errors and the server keeps serving; concurrent clients get correct answers; SIGTERM stops it."""

import base64
import csv
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, make_config
from PIL import Image
from test_predict import read_csv, run_predict, write_table_csv

from trainlab.export import export
from trainlab.run import train


class Server:
    """``python serve.py ckpt=... port=0`` in the background; ready once uvicorn prints its address."""

    def __init__(self, ckpt: Path, *overrides: str):
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "serve.py"), f"ckpt={ckpt}", "port=0", "access_log=false", *overrides],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        for line in self.process.stderr:  # blocks until the next line: an event, not a sleep
            self.lines.append(line)
            ready = re.search(r"Uvicorn running on (http://\S+)", line)
            if ready:
                self.url = ready[1]
                break
        else:
            raise AssertionError(f"serve.py exited with {self.process.wait()}: {''.join(self.lines)}")
        threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True).start()
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self) -> int:
        """SIGTERM; the exit code, which must come within 5 seconds."""
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=5)


@pytest.fixture(scope="module")
def digits_files(digits_run, tmp_path_factory) -> dict:
    """The digits checkpoint, its ONNX export and a folder of PNGs (8x8 grey and 24x24 colour)."""
    folder = tmp_path_factory.mktemp("serve")
    ckpt = digits_run[0] / "checkpoints" / "best.ckpt"
    export(make_config(f"ckpt={ckpt}", f"output={folder / 'digits.onnx'}", config_name="export"))
    pictures = folder / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        pixels = rng.integers(0, 256, (8, 8) if i % 2 else (24, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(pictures / f"{i}.png")
    return {"ckpt": ckpt, "onnx": folder / "digits.onnx", "pictures": pictures, "folder": folder}


@pytest.fixture(scope="module", params=["ckpt", "onnx"])
def digits_server(request, digits_files):
    server = Server(digits_files[request.param])
    yield server
    assert server.stop() is not None


@pytest.fixture(scope="module")
def iris_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("iris")
    train(make_config("dataset=iris", "trainer.max_epochs=5"), folder / "run")
    rows = folder / "rows.csv"
    write_table_csv(rows, "iris", slice(0, 150, 10))
    return {"ckpt": folder / "run" / "checkpoints" / "best.ckpt", "rows": rows, "folder": folder}


@pytest.fixture(scope="module")
def iris_server(iris_files):
    server = Server(iris_files["ckpt"])
    yield server
    assert server.stop() is not None


def predicted_by_predict_py(ckpt: Path, source: Path, output: Path) -> list[dict]:
    run_predict(f"ckpt={ckpt}", f"input={source}", f"output={output}")
    return read_csv(output)


def assert_same_answers(answers: list[dict], rows: list[dict]) -> None:
    assert len(answers) == len(rows)
    for answer, row in zip(answers, rows, strict=True):
        assert answer["label"] == row["label"] and answer["class_index"] == int(row["prediction"])
        for name, p in answer["probabilities"].items():
            assert p == pytest.approx(float(row[f"prob_{name}"]), abs=1e-5)


def test_images_answer_as_predict_py(digits_server, digits_files):
    files = sorted(digits_files["pictures"].glob("*.png"))
    expected = predicted_by_predict_py(
        digits_files["ckpt"], digits_files["pictures"], digits_files["folder"] / "p.csv"
    )
    multipart = digits_server.client.post("/predict", files=[("file", (f.name, f.read_bytes())) for f in files])
    assert multipart.status_code == 200, multipart.text
    assert_same_answers(multipart.json()["predictions"], expected)
    images = [base64.b64encode(f.read_bytes()).decode() for f in files]
    as_json = digits_server.client.post("/predict", json={"images": images})
    assert_same_answers(as_json.json()["predictions"], expected)
    one = digits_server.client.post("/predict", files={"file": files[0].read_bytes()})
    assert_same_answers(one.json()["predictions"], expected[:1])


def test_metadata_and_openapi(digits_server, digits_run):
    metadata = digits_server.client.get("/metadata").json()
    assert metadata["task"] == "multiclass" and metadata["classes"] == [str(i) for i in range(10)]
    assert metadata["input_spec"]["inputs"]["input_shape"] == [1, 8, 8]
    assert metadata["test_metrics"] == {k: v for k, v in digits_run[1].items() if k.startswith("test/")}
    assert digits_server.client.get("/health").json()["status"] == "ok"
    body = digits_server.client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
    assert set(body["content"]) == {"multipart/form-data", "application/json"}
    assert digits_server.client.get("/docs").status_code == 200


def test_rows_answer_as_predict_py(iris_server, iris_files):
    expected = predicted_by_predict_py(iris_files["ckpt"], iris_files["rows"], iris_files["folder"] / "p.csv")
    with open(iris_files["rows"], newline="") as f:
        rows = [{k: float(v) for k, v in row.items() if k != "target"} for row in csv.DictReader(f)]
    answer = iris_server.client.post("/predict", json={"rows": rows})
    assert answer.status_code == 200, answer.text
    assert_same_answers(answer.json()["predictions"], expected)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


GOOD = png(np.zeros((8, 8), np.uint8))
NOISE = png(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
IMAGE_REQUESTS = {
    "undecodable image": ({"files": {"file": ("x.png", b"not an image")}}, 400, "x.png is not an image"),
    "truncated image": ({"files": {"file": ("x.png", NOISE[: len(NOISE) // 2])}}, 400, "not a readable image"),
    "wrong channel count": ({"json": {"inputs": np.zeros((1, 3, 8, 8)).tolist()}}, 400, "expects (1, 8, 8)"),
    "wrong size": ({"json": {"inputs": np.zeros((2, 1, 9, 9)).tolist()}}, 400, "inputs of shape (1, 9, 9)"),
    "not base64": ({"json": {"images": ["%%%"]}}, 400, "images[0] is not base64"),
    "rows for an image model": ({"json": {"rows": [{"a": 1}]}}, 422, "rows: Extra inputs are not permitted"),
    "unknown field": ({"json": {"image": "x"}}, 422, "image: Extra inputs are not permitted"),
    "two fields": ({"json": {"images": [], "inputs": []}}, 422, "give one of images or inputs"),
    "no input": ({"json": {"images": []}}, 422, "images is empty"),
    "broken JSON": ({"content": b"{oops", "headers": {"content-type": "application/json"}}, 422, "Invalid JSON"),
    "ragged arrays": ({"json": {"inputs": [[1, [2]]]}}, 422, "not arrays of numbers"),
    "other content type": ({"content": b"hi", "headers": {"content-type": "text/plain"}}, 415, "text/plain"),
    "form without a file": ({"files": {"f": (None, "text")}}, 400, "no file"),
    "too many inputs": ({"json": {"inputs": np.zeros((65, 1, 8, 8)).tolist()}}, 413, "limit of 64"),
    "too many files": ({"files": [("file", ("a.png", GOOD))] * 65}, 413, "Maximum number of files is 64"),
    "body over the limit": (
        {"content": b" " * 10_000_001, "headers": {"content-type": "application/json"}},
        413,
        "over the limit of 10 MB",
    ),
}


def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(digits_server):
    client = digits_server.client
    for name, (request, status, complaint) in IMAGE_REQUESTS.items():
        answer = client.post("/predict", **request)
        assert answer.status_code == status and complaint in answer.json()["error"], (name, answer.text)
    streamed = (b" " * 1_000_000 for _ in range(11))  # chunked: no content-length to refuse it by
    answer = client.post("/predict", content=streamed, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "over the limit of 10 MB" in answer.json()["error"]
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/predict", files={"file": GOOD}).status_code == 200


def test_bad_rows_get_a_4xx_json_error(iris_server):
    row = {"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2}
    cases = [
        (
            [{k: v for k, v in row.items() if k != "petal width (cm)"}],
            "lacks the feature column(s) petal width (cm)",
        ),
        ([row | {"colour": "red"}], "unknown column(s) colour"),
        ([row | {"sepal length (cm)": "long"}], "row 0 has 'long'"),
        ([row | {"sepal length (cm)": [5.1]}], "is not a number or text"),
        (["not a row"], "rows.0: Input should be an object"),
    ]
    for rows, complaint in cases:
        answer = iris_server.client.post("/predict", json={"rows": rows})
        assert 400 <= answer.status_code < 500 and complaint in answer.json()["error"], answer.text
    images = iris_server.client.post("/predict", files={"file": GOOD})
    assert images.status_code == 400 and "takes table rows, not files" in images.json()["error"]
    assert iris_server.client.post("/predict", json={"rows": [row]}).json()["predictions"][0]["label"] == "setosa"


def concurrent_clients(server: Server, clients: int, requests: int) -> None:
    """``clients`` threads, each with its own connection, send ``requests`` requests of 1-3 images each;
    every answer must be the one a lone request gets (batching must not mix answers up)."""
    rng = np.random.default_rng(1)
    pictures = [png(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(8)]
    alone = [server.client.post("/predict", files={"file": p}).json()["predictions"][0]["label"] for p in pictures]

    def client(seed: int) -> int:
        errors, picks = 0, np.random.default_rng(seed)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(requests):
                chosen = picks.choice(len(pictures), picks.integers(1, 4))
                answer = http.post("/predict", files=[("file", (f"{i}.png", pictures[i])) for i in chosen])
                labels = [p["label"] for p in answer.json()["predictions"]] if answer.status_code == 200 else None
                errors += labels != [alone[i] for i in chosen]
        return errors

    with ThreadPoolExecutor(clients) as pool:
        assert sum(pool.map(client, range(clients))) == 0


def test_concurrent_clients_get_their_own_answers(digits_server):
    concurrent_clients(digits_server, clients=16, requests=10)


@pytest.mark.slow
def test_sixteen_clients_times_a_hundred_requests(digits_server):
    concurrent_clients(digits_server, clients=16, requests=100)


def wait_until(condition) -> None:
    """Asks the server until ``condition`` holds: a state it reaches within milliseconds of the request
    that leads to it, each try a real round trip (no sleep)."""
    for _ in range(10_000):
        if condition():
            return
    raise AssertionError("the server never reached the state")


def test_a_request_that_comes_while_another_is_read_joins_its_batch(digits_files):
    """Two requests, one of them still being read (its last bytes held back by this test) when the other
    comes: the batch waits for it (max_wait_ms, long here), and one forward pass answers both."""
    server = Server(digits_files["onnx"], "max_wait_ms=600000")
    stats = lambda: server.client.get("/health").json()  # noqa: E731
    request = server.client.build_request("POST", "/predict", files={"file": NOISE})
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    body = request.read()
    with socket.create_connection((request.url.host, request.url.port)) as slow:
        slow.sendall(f"POST /predict HTTP/1.1\r\n{head}\r\n".encode() + body[:-10])
        wait_until(lambda: stats()["reading"] == 1)
        with ThreadPoolExecutor(1) as pool:
            quick = pool.submit(httpx.post, f"{server.url}/predict", files={"file": GOOD}, timeout=60)
            wait_until(lambda: stats()["pending"] == 1)
            slow.sendall(body[-10:])
            answer = http.client.HTTPResponse(slow)
            answer.begin()
            batched = [json.loads(answer.read())["predictions"][0], quick.result().json()["predictions"][0]]
    assert {k: stats()[k] for k in ("requests", "forward_passes", "largest_batch")} == {
        "requests": 2,
        "forward_passes": 1,
        "largest_batch": 2,
    }
    for picture, got in zip((NOISE, GOOD), batched, strict=True):
        alone = server.client.post("/predict", files={"file": picture}).json()["predictions"][0]
        assert got["label"] == alone["label"] and got["probabilities"] == pytest.approx(alone["probabilities"])
    assert server.stop() is not None


def test_sigterm_stops_it_within_seconds(digits_files):
    server = Server(digits_files["onnx"])
    assert server.client.post("/predict", files={"file": GOOD}).status_code == 200
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
    assert any("Finished server process" in line for line in server.lines)


def test_it_binds_the_loopback_address_by_default():
    assert make_config("ckpt=x", config_name="serve").host == "127.0.0.1"
