"""serve.py as users run it: a real uvicorn process on a free port and a real HTTP client. Its answers equal
predict.py's for images and table rows, with torch (.ckpt) and ONNX Runtime (.onnx) alike; bad requests are
4xx JSON errors and the server keeps serving; concurrent clients get correct answers; SIGTERM stops it."""

import base64
import csv
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, Server, make_config, messages, read_csv, write_tsv
from PIL import Image
from test_predict import run_predict, write_table_csv

from trainlab.export import export
from trainlab.run import train


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
    server.stop_cleanly()


@pytest.fixture(scope="module")
def iris_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("iris")
    train(make_config("dataset=iris", "trainer.max_epochs=5"), folder / "run")
    rows = folder / "rows.csv"
    write_table_csv(rows, "iris", slice(0, 150, 10))
    return {"ckpt": folder / "run" / "checkpoints" / "best.ckpt", "rows": rows, "folder": folder}


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> dict:
    """A small text classifier (embedding_bag) trained on ``messages()``."""
    folder = tmp_path_factory.mktemp("texts")
    corpus = write_tsv(folder / "messages.tsv", messages())
    overrides = ("dataset=text", f"dataset.path={corpus}", "model=embedding_bag", "trainer.max_epochs=2")
    train(make_config(*overrides), folder / "run")
    return {"ckpt": folder / "run" / "checkpoints" / "best.ckpt", "folder": folder}


@pytest.fixture(scope="module")
def iris_server(iris_files):
    server = Server(iris_files["ckpt"])
    yield server
    server.stop_cleanly()


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
    assert digits_server.url.startswith("http://127.0.0.1:")  # the loopback address by default
    metadata = digits_server.client.get("/metadata").json()
    assert metadata["task"] == "multiclass" and metadata["classes"] == [str(i) for i in range(10)]
    assert metadata["input_spec"]["inputs"]["input_shape"] == [1, 8, 8]
    assert metadata["test_metrics"] == {k: v for k, v in digits_run[1].items() if k.startswith("test/")}
    assert digits_server.client.get("/health").json()["status"] == "ok"
    predict = digits_server.client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert predict["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["file"]
    one_of = predict["requestBody"]["content"]["application/json"]["schema"]["oneOf"]  # images or inputs, alone
    assert [(v["required"], v["additionalProperties"]) for v in one_of] == [
        (["images"], False),
        (["inputs"], False),
    ]
    errors = {status: answer for status, answer in predict["responses"].items() if status != "200"}
    assert set(errors) == {"400", "413", "415", "422", "500"}
    assert all(
        e["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        for e in errors.values()
    )
    not_allowed = digits_server.client.put("/predict")  # its Allow header kept by trainlab's error handler
    assert (
        not_allowed.status_code == 405 and not_allowed.headers["allow"] == "POST" and "error" in not_allowed.json()
    )
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
    "true and false": ({"json": {"inputs": np.full((1, 1, 8, 8), True).tolist()}}, 422, "not arrays of numbers"),
    "a field given as null": ({"json": {"images": None}}, 422, "images: Input should be a valid array"),
    "beyond float32": (
        {"json": {"inputs": np.full((2, 1, 8, 8), 1e39).tolist()}},
        400,
        "inputs [0, 1] are not finite",
    ),
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
        ([row, row | {"sepal length (cm)": "5.1"}], "row 1 has '5.1'; send a number"),  # JSON numbers only
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


def send_all_but_the_end(request: httpx.Request) -> tuple[socket.socket, bytes]:
    """A raw connection that sent ``request`` but for its last 10 bytes (the server goes on reading it), and
    those bytes."""
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    body = request.read()
    connection = socket.create_connection((request.url.host, request.url.port))
    connection.sendall(f"{request.method} {request.url.path} HTTP/1.1\r\n{head}\r\n".encode() + body[:-10])
    return connection, body[-10:]


def finish(connection: socket.socket, rest: bytes) -> tuple[int, dict]:
    """Send the rest of a request (``send_all_but_the_end``): its answer's status and JSON."""
    connection.sendall(rest)
    answer = http.client.HTTPResponse(connection)
    answer.begin()
    return answer.status, json.loads(answer.read())


def test_a_request_that_comes_while_another_is_read_joins_its_batch(digits_files):
    """Two requests, one of them still being read (its last bytes held back by this test) when the other
    comes: the batch waits for it (max_wait_ms, long here), and one forward pass answers both."""
    server = Server(digits_files["onnx"], "max_wait_ms=600000")
    stats = server.stats
    slow, rest = send_all_but_the_end(server.client.build_request("POST", "/predict", files={"file": NOISE}))
    with slow:
        wait_until(lambda: stats()["reading"] == 1)
        with ThreadPoolExecutor(1) as pool:
            quick = pool.submit(httpx.post, f"{server.url}/predict", files={"file": GOOD}, timeout=60)
            wait_until(lambda: stats()["pending"] == 1)
            batched = [finish(slow, rest)[1]["predictions"][0], quick.result().json()["predictions"][0]]
    assert {k: stats()[k] for k in ("requests", "forward_passes", "largest_batch")} == {
        "requests": 2,
        "forward_passes": 1,
        "largest_batch": 2,
    }
    for picture, got in zip((NOISE, GOOD), batched, strict=True):
        alone = server.client.post("/predict", files={"file": picture}).json()["predictions"][0]
        assert got["label"] == alone["label"] and got["probabilities"] == pytest.approx(alone["probabilities"])
    server.stop_cleanly()


def test_sigterm_stops_it_within_seconds(digits_files):
    server = Server(digits_files["onnx"])
    assert server.client.post("/predict", files={"file": GOOD}).status_code == 200
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after its graceful shutdown
    assert any("Finished server process" in line for line in server.lines)


def test_two_workers_answer_as_one_health_counts_each_and_sigterm_stops_all(digits_files):
    """workers=2: two processes with their own model share the port; their answers are predict.py's, GET
    /health (whichever worker answers) counts each worker's requests and all of them, and SIGTERM to the
    server stops both, gracefully."""
    server = Server(digits_files["onnx"], "workers=2")
    wait_until(lambda: len(server.stats()["workers"]) == 2)  # each writes its row once its app is built
    files = sorted(digits_files["pictures"].glob("*.png"))
    expected = predicted_by_predict_py(
        digits_files["ckpt"], digits_files["pictures"], digits_files["folder"] / "w.csv"
    )

    def answer(path: Path) -> dict:
        with httpx.Client(base_url=server.url, timeout=60) as http:  # a connection of its own: any worker
            return http.post("/predict", files={"file": (path.name, path.read_bytes())}).json()["predictions"][0]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(answer, files * 3))
    assert_same_answers(answers, expected * 3)  # predict.py's rows: in the files' sorted order
    health = server.stats()
    assert health["worker"] in {row["pid"] for row in health["workers"]}
    assert len({row["pid"] for row in health["workers"]}) == 2
    assert health["requests"] == sum(row["requests"] for row in health["workers"]) == len(files) * 3
    server.stop_cleanly()
    assert sum("Finished server process" in line for line in server.lines) == 2, "".join(server.lines)
    for row in health["workers"]:
        with pytest.raises(ProcessLookupError):
            os.kill(row["pid"], 0)


def test_only_small_uploads_of_few_pixels_are_read_in_the_event_loop(digits_files):
    """A small upload whose headers say few pixels is read where it came (no thread hand-over: its decode
    takes less); one of as few bytes that decodes to many pixels (a 4000x4000 1-bit PNG: 2 KB), or more
    bytes, is left to a decoding thread (None); over max_pixels it is refused all the same."""
    from trainlab.errors import TooLarge
    from trainlab.inference import Predictor
    from trainlab.serve.reading import INLINE_BYTES, INLINE_PIXELS, read_small_upload

    predictor = Predictor.load(digits_files["onnx"], "cpu")
    small = [("a.png", GOOD), ("b.png", NOISE)]
    assert read_small_upload(predictor, small, max_pixels=50_000_000).shape == (2, 1, 8, 8)
    many_pixels = image_file("1", (4000, 4000))
    assert len(many_pixels) < INLINE_BYTES and INLINE_PIXELS < 4000 * 4000
    assert read_small_upload(predictor, [("c.png", many_pixels)], max_pixels=50_000_000) is None
    assert read_small_upload(predictor, [("d.png", GOOD)] * (INLINE_BYTES // len(GOOD) + 1), 10**6) is None
    assert read_small_upload(predictor, b'{"images": []}', max_pixels=50_000_000) is None  # JSON: a thread's
    with pytest.raises(TooLarge, match=r"over the limit of 0\.0001 MP"):
        read_small_upload(predictor, [("e.png", image_file("L", (20, 20)))], max_pixels=100)


# -- hostile and heavy uploads, disconnects ----------------------------------------------------------------
def image_file(mode: str, size: tuple[int, int], format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format)
    return buffer.getvalue()


def test_images_over_max_pixels_are_refused_from_their_headers_while_health_answers(digits_server):
    """The hostile upload of issue 25: 64 PNGs of 12000x12000 1-bit pixels (17.6 KB each, 144 MP decoded
    each) in one request, its last bytes held back: ``/health`` answers while it is in flight, and once
    complete it is refused with a 413 that names the sizes, from the files' headers (max_pixels, 50 MP);
    the server serves on."""
    hostile = image_file("1", (12000, 12000))
    request = digits_server.client.build_request(
        "POST", "/predict", files=[("file", (f"{i}.png", hostile)) for i in range(64)]
    )
    connection, rest = send_all_but_the_end(request)
    with connection:
        wait_until(lambda: digits_server.stats()["reading"] == 1)
        status, answer = finish(connection, rest)
    assert status == 413, answer
    assert answer["error"].startswith(
        "the 64 images decode to 9216.0 MP in all (the largest, 0.png decodes to 12000x12000 pixels (144.0 MP)), "
        "over the limit of 50 MP per request (max_pixels)"
    )
    assert digits_server.client.post("/predict", files={"file": GOOD}).status_code == 200


def test_max_pixels_bounds_what_a_request_decodes(digits_files):
    """``max_pixels`` (1 MP here) bounds the pixels of a request's images together, as their headers say: one
    image over it, or many under it that add up to more, are refused (413, naming the sizes); a JPEG counts
    at the size it decodes at (``Image.draft``: an eighth of 4000x4000 for an 8x8 model), so a large photo
    passes, and answers as the raw input ``read_image`` makes of it."""
    from trainlab.dataloader.kinds.image import open_image, read_image

    server = Server(digits_files["onnx"], "max_pixels=1_000_000")
    big = image_file("1", (1001, 1000))
    refused = [
        (
            {"files": {"file": ("big.png", big)}},
            "big.png decodes to 1001x1000 pixels (1.0 MP), over the limit of 1 MP",
        ),
        ({"json": {"images": [base64.b64encode(big).decode()]}}, "images[0] decodes to 1001x1000 pixels"),
        (
            {"files": [("file", (f"{i}.png", image_file("L", (130, 130)))) for i in range(64)]},
            "the 64 images decode to 1.1 MP in all (the largest, 0.png decodes to 130x130 pixels",
        ),
    ]
    for request, complaint in refused:
        answer = server.client.post("/predict", **request)
        assert answer.status_code == 413 and complaint in answer.json()["error"], answer.text
    photo = digits_files["folder"] / "photo.jpg"
    gradient = np.add.outer(np.arange(4000), np.arange(4000)) // 32 % 256
    Image.fromarray(gradient.astype(np.uint8)).save(photo, quality=90)
    with open_image(photo, (1, 8, 8)) as opened:
        assert opened.size == (500, 500)
    answer = server.client.post("/predict", files={"file": photo.read_bytes()})
    raw = server.client.post("/predict", json={"inputs": read_image(photo, (1, 8, 8))[None].tolist()})
    assert answer.status_code == 200 and answer.json() == raw.json()
    server.stop_cleanly()


def test_a_client_that_goes_away_mid_upload_is_one_log_line(digits_files):
    """Clients that close their connection halfway through sending a file or JSON: one log line each, no
    traceback, and the server serves on."""
    server = Server(digits_files["onnx"])
    uploads = [
        server.client.build_request("POST", "/predict", files={"file": NOISE}),
        server.client.build_request("POST", "/predict", json={"images": [base64.b64encode(NOISE).decode()]}),
    ]
    for request in uploads:
        connection, _ = send_all_but_the_end(request)
        wait_until(lambda: server.stats()["reading"] == 1)
        connection.close()
        wait_until(lambda: server.stats()["reading"] == 0)
    assert server.client.post("/predict", files={"file": GOOD}).status_code == 200
    server.stop_cleanly()
    went_away = [line for line in server.lines if "went away before its request was read" in line]
    assert len(went_away) == 2, "".join(server.lines)
    assert not any("Traceback" in line or "Exception" in line for line in server.lines), "".join(server.lines)


# -- the API's documentation and schema --------------------------------------------------------------------
CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_api_docs_render_offline_in_chromium(iris_server, tmp_path):
    """``/docs`` (Swagger UI) and ``/redoc`` as headless Chromium renders them when it can reach no host but
    the server: their scripts come from the server (fastapi-offline's copies), and draw ``POST /predict``."""
    pages = {"/docs": 'data-path="/predict"', "/redoc": 'id="operation/predict_predict_post"'}
    for page, drawn in pages.items():
        served = iris_server.client.get(page).text
        assert drawn not in served and "https://" not in served  # drawn by the scripts, all from here
        chromium = subprocess.run(
            [
                CHROMIUM,
                *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
                *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
                f"--user-data-dir={tmp_path / page.strip('/')}",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # offline: no other host
                "--virtual-time-budget=60000",  # run the page's scripts and timers for 60 s of page time
                "--dump-dom",
                f"{iris_server.url}{page}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert drawn in chromium.stdout, chromium.stderr[-2000:]


@pytest.mark.parametrize("model", ["digits", "iris", "text"])
def test_schemathesis_finds_no_failure(model, request, tmp_path):
    """schemathesis, an API fuzzer nobody here wrote, against a real server with every check (``--checks
    all``: no 5xx; statuses, headers and bodies as documented; bodies the schema allows accepted, those it
    refuses refused; other methods 405 with ``Allow``), 50 examples per operation, a fixed seed, one worker,
    no example database: the same requests every run. ``tests/schemathesis.toml`` says which statuses
    accept and refuse (and why). max_inputs=4: its coverage phase builds arrays at their maxItems, and 64
    nested (1, 8, 8) arrays take it minutes."""
    files = request.getfixturevalue(f"{model}_files")
    server = Server(files.get("onnx", files["ckpt"]), "max_inputs=4")
    command = [
        str(Path(sys.executable).parent / "st"),
        *("--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run", f"{server.url}/openapi.json"),
        *("--checks", "all", "--max-examples", "50", "--seed", "1", "--workers", "1"),
        *("--generation-database", "none", "--request-timeout", "60", "--no-color"),
    ]
    try:
        fuzz = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        server.stop_cleanly()
    assert fuzz.returncode == 0 and "No issues found" in fuzz.stdout, fuzz.stdout[-5000:]
