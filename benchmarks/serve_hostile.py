"""Measurement: trainlab's server under hostile and heavy uploads (issue 25's acceptance), on the digits MLP.

    python benchmarks/serve_hostile.py        # about a minute

Each case sends one request while another connection asks ``GET /health`` every 10 ms, and prints the
request's status and time, the slowest ``/health`` round trip meanwhile, and the server's memory growth
(resident set: the most seen while polling, and the peak the kernel recorded, each less the figure before
the request):

- hostile: 64 PNGs of 12000x12000 1-bit pixels (17.6 KB each, 144 MP decoded each): refused from their
  headers (413);
- heaviest allowed: one flat 7071x7071 RGB PNG (50 MP, ``max_pixels``), decoded;
- the largest JSON body (``max_body_mb``: 10), numbers that pydantic parses before their shape is refused;
- SIGTERM while the heaviest allowed request and 16 small ones are open: how many were answered, and
  how long the process took to exit (``graceful_shutdown_s``: 3).
"""

import http.client
import io
import json
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from serve_speed import start

ROOT = Path(__file__).resolve().parents[1]
BOUNDARY = "trainlab-hostile"


def png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def form(files: list[bytes]) -> tuple[bytes, dict[str, str]]:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(), {
        "content-type": f"multipart/form-data; boundary={BOUNDARY}"
    }


def post(address: tuple[str, int], files: list[bytes] | bytes) -> tuple[int, float, str]:
    """(status, seconds, body) of a multipart request with these files, or of this JSON."""
    body, headers = (files, {"content-type": "application/json"}) if isinstance(files, bytes) else form(files)
    connection = http.client.HTTPConnection(*address, timeout=120)
    begin = time.perf_counter()
    connection.request("POST", "/predict", body, headers)
    answer = connection.getresponse()
    text = answer.read().decode()
    return answer.status, time.perf_counter() - begin, text


def memory_kb(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


class HealthPoller(threading.Thread):
    """``GET /health`` every 10 ms on its own connection, and the server's resident memory, until stopped."""

    def __init__(self, address: tuple[str, int], pid: int):
        super().__init__(daemon=True)
        self.address, self.pid = address, pid
        self.latencies: list[float] = []
        self.rss_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        connection = http.client.HTTPConnection(*self.address, timeout=60)
        while not self.done.is_set():
            begin = time.perf_counter()
            connection.request("GET", "/health")
            json.loads(connection.getresponse().read())
            self.latencies.append(time.perf_counter() - begin)
            self.rss_kb = max(self.rss_kb, memory_kb(self.pid)["VmRSS"])
            self.done.wait(0.01)


def measure(name: str, address: tuple[str, int], pid: int, files: list[bytes] | bytes) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) from now on (Linux; needs the owner)
    before = memory_kb(pid)
    poller = HealthPoller(address, pid)
    poller.start()
    while not poller.latencies:  # polling before the request goes
        time.sleep(0.001)
    status, seconds, text = post(address, files)
    poller.done.set()
    poller.join()
    after = memory_kb(pid)
    print(
        f"| {name} | {status} | {seconds:.2f} | {max(poller.latencies) * 1000:.1f} ({len(poller.latencies)} polls) "
        f"| {(poller.rss_kb - before['VmRSS']) / 1024:.0f} | {(after['VmHWM'] - before['VmRSS']) / 1024:.0f} "
        f"| {text[:110]} |"
    )


def sigterm_during(ckpt: Path, heavy: list[bytes], small: bytes) -> None:
    process, url = start([sys.executable, "serve.py", f"ckpt={ckpt}", "port=0", "access_log=false"])
    address = (url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1]))
    post(address, [small])
    with ThreadPoolExecutor(17) as pool:
        requests = [pool.submit(post, address, heavy)] + [pool.submit(post, address, [small]) for _ in range(16)]
        time.sleep(0.2)  # a measurement, not a test: let the requests arrive
        begin = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        exited = time.perf_counter() - begin
        answers = []
        for request in requests:
            try:
                answers.append(request.result()[0])
            except OSError as error:
                answers.append(type(error).__name__)
    answered = sum(status == 200 for status in answers)
    print(
        f"SIGTERM with 17 requests open: exit {code} after {exited:.2f} s; answered 200: {answered}/17 {answers}"
    )


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="serve_hostile_"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    import subprocess

    subprocess.run(
        [sys.executable, "train.py", "trainer.max_epochs=1", f"hydra.run.dir={folder}", "trainer.progress=false"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    ckpt = folder / "checkpoints" / "best.ckpt"
    small = png("L", (8, 8))
    hostile = [png("1", (12000, 12000))] * 64
    heavy = [png("RGB", (7071, 7071))]
    numbers = json.dumps({"inputs": [[[[0] * 3_300_000]]]}).encode()  # parsed, then refused: not (1, 8, 8)
    print(
        f"hostile: 64 x {len(hostile[0]) / 1e3:.1f} KB; heavy: {len(heavy[0]) / 1e3:.1f} KB; {os.cpu_count()} cores"
    )
    # one worker process: the memory measured is the process that decodes (with several, each decodes its own)
    process, url = start([sys.executable, "serve.py", f"ckpt={ckpt}", "port=0", "access_log=false", "workers=1"])
    address = (url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1]))
    try:
        post(address, [small])
        print(
            "| request | status | seconds | slowest /health ms | RSS growth MB (polled) | peak RSS growth MB | answer |"
        )
        print("|---|---|---|---|---|---|---|")
        measure("64 x 12000x12000 1-bit PNG", address, process.pid, hostile)
        measure("1 x 7071x7071 RGB PNG (50 MP)", address, process.pid, heavy)
        measure("64 x 12000x12000 1-bit PNG, again", address, process.pid, hostile)
        measure("JSON inputs: 9.9 MB of numbers", address, process.pid, numbers)
    finally:
        process.terminate()
        process.wait(timeout=10)
    sigterm_during(ckpt, heavy, small)


if __name__ == "__main__":
    main()
