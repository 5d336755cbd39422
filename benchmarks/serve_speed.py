"""Benchmark: trainlab's server (torch and ONNX Runtime backends) against a minimal hand-written FastAPI
endpoint around the same model (one forward pass per request), for the digits MLP and the MNIST CNN.

    python benchmarks/serve_speed.py                        # about 4 minutes on 2 cores
    python benchmarks/serve_speed.py --rounds 1 --requests 100

Each model is trained briefly (its weights do not change its speed) and exported; the three servers run
as uvicorn processes on 127.0.0.1 side by side (httptools and uvloop, as ``uvicorn[standard]`` installs
them for all three), access logs off, one compute thread each. A client in this
process (aiohttp, asyncio) sends each server bursts of single-PNG multipart requests at concurrency 1 and
16, the servers taking turns within each round; a variant's figures are its best round (other jobs on a
shared machine only ever add time), its ratios to the plain endpoint the median of the rounds' ratios
(each round's servers ran side by side in time, under the same load). Also measured: the model's own
forward time per input (torch eager and ONNX Runtime, batch 1 and 16), the PNG decode, and a
``GET /health`` round trip (the HTTP floor of a request); from trainlab's ``GET /health``, the requests per
forward pass at each concurrency (how the server batched them); and each server's CPU time per request and
the share of the burst its event-loop thread was running (Linux's /proc): where the time goes.
"""

import argparse
import asyncio
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 16)


def plain_server(ckpt: str) -> None:
    """The baseline: the model and the same image decoding in one async FastAPI endpoint, no batching."""
    import uvicorn
    from fastapi import FastAPI, UploadFile

    from trainlab.dataloader.kinds.image import read_image
    from trainlab.inference import load_model

    torch.set_num_threads(1)
    _, spec, model = load_model(ckpt, "cpu")
    normalize, shape = spec.input_kind().preprocessing(), spec.inputs["input_shape"]
    app = FastAPI()

    @app.post("/predict")
    async def predict(file: UploadFile) -> dict:
        x = normalize(read_image(io.BytesIO(await file.read()), shape)[None])
        with torch.inference_mode():
            probabilities = model(x).softmax(-1)[0]
        index = int(probabilities.argmax())
        return {"label": spec.class_names[index], "class_index": index, "probabilities": probabilities.tolist()}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=0, access_log=False)


def start(command: list[str]) -> tuple[subprocess.Popen, str]:
    """A server process and its address, once uvicorn printed it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    for line in process.stderr:
        found = re.search(r"Uvicorn running on (http://\S+)", line)
        if found:
            return process, found[1]
    raise RuntimeError(f"{command} exited with {process.wait()}")


def train_and_export(folder: Path, name: str, overrides: list[str]) -> Path:
    run_dir = folder / name
    python = [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(
        [*python, "train.py", *overrides, f"hydra.run.dir={run_dir}", "trainer.progress=false"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    subprocess.run([*python, "export.py", f"ckpt={ckpt}"], cwd=ROOT, env=env, check=True, capture_output=True)
    return ckpt


BOUNDARY = "trainlab-benchmark"


def multipart(png: bytes) -> bytes:
    """One image file as a multipart/form-data body, built once (the client's share of each request small)."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
    return f"{head}Content-Type: image/png\r\n\r\n".encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


async def burst(
    url: str, png: bytes, concurrency: int, requests: int, path: str = "/predict", pid: int | None = None
) -> tuple[list[float], list[float]]:
    """Latencies (s) of ``requests`` requests sent by ``concurrency`` clients, one connection each
    (aiohttp's client: a few times less CPU per request than httpx's, which shares the machine), and last
    the burst's wall time; and the CPU time that the server ``pid`` used meanwhile (``cpu_seconds``). Each
    client connects and sends one request first, and the clock starts when all have: the figures are the
    steady state, not the connections' set-up."""
    import aiohttp

    latencies: list[float] = []
    body, headers = multipart(png), {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    connected, go = asyncio.Semaphore(0), asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=1)) as http:

            async def send() -> float:
                begin = time.perf_counter()
                request = http.get(path) if path == "/health" else http.post(path, data=body, headers=headers)
                async with request as answer:
                    answer.raise_for_status()
                    await answer.read()
                return time.perf_counter() - begin

            await send()
            connected.release()
            await go.wait()
            for _ in range(requests // concurrency):
                latencies.append(await send())

    clients = [asyncio.create_task(client()) for _ in range(concurrency)]
    for _ in range(concurrency):
        await connected.acquire()
    cpu_before = cpu_seconds(pid) if pid else ()
    began = time.perf_counter()
    go.set()
    await asyncio.gather(*clients)
    latencies.append(time.perf_counter() - began)  # the last entry: the burst's wall time
    cpu_used = [b - a for a, b in zip(cpu_before, cpu_seconds(pid), strict=True)] if pid else []
    return latencies, cpu_used


def batching(url: str) -> dict | None:
    """A trainlab server's counts of requests and forward passes (``GET /health``); None for the plain one."""
    with urllib.request.urlopen(f"{url}/health") as answer:
        health = json.load(answer)
    return health if "forward_passes" in health else None


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system, s) of a server process and of its main thread, the event loop's (Linux)."""

    def used(stat: str) -> float:
        fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    return used(f"/proc/{pid}/stat"), used(f"/proc/{pid}/task/{pid}/stat")


def per_call_ms(call, *args, n: int) -> float:
    call(*args)  # warm-up
    begin = time.perf_counter()
    for _ in range(n):
        call(*args)
    return (time.perf_counter() - begin) / n * 1000


def forward_times(ckpt: Path, body: bytes) -> dict[str, float]:
    """The model's own time per input (torch eager and ONNX Runtime, one thread) and the PNG decode, in ms."""
    from trainlab.dataloader.kinds.image import read_image
    from trainlab.inference import OnnxPredictor, TorchPredictor

    torch.set_num_threads(1)
    backends = {
        "torch": TorchPredictor(ckpt, "cpu"),
        "onnx": OnnxPredictor(ckpt.parent.parent / "best.onnx", "cpu", 1),
    }
    times = {}
    for name, predictor in backends.items():
        for batch in (1, 16):
            x = torch.rand(batch, *predictor.spec.inputs["input_shape"])
            times[f"{name}_b{batch}"] = per_call_ms(predictor, x, n=200 // batch) / batch
    shape = backends["torch"].spec.inputs["input_shape"]
    times["decode"] = per_call_ms(lambda: read_image(io.BytesIO(body), shape), n=200)
    return times


def png(shape: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def summary(latencies: list[float]) -> tuple[float, float, float]:
    """(requests per second, p50 ms, p99 ms)."""
    *each, wall = latencies
    return len(each) / wall, float(np.percentile(each, 50)) * 1000, float(np.percentile(each, 99)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"), help="holds MNIST/raw")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=960, help="per burst (concurrency 1: a quarter)")
    parser.add_argument("--plain", help=argparse.SUPPRESS)  # internal: run the baseline server for a checkpoint
    args = parser.parse_args()
    if args.plain:
        return plain_server(args.plain)

    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="serve_speed_"))
    models = {
        "digits MLP": (["model=mlp", "dataset=digits", "trainer.max_epochs=2"], png((8, 8))),
        "MNIST CNN": (
            ["model=cnn", "dataset=mnist", "dataset.download=false", f"paths.data_dir={args.data_dir}", "trainer.max_epochs=1", "trainer.limit_batches=20"],
            png((28, 28)),
        ),
    }  # fmt: skip
    rows = []
    for model_name, (overrides, body) in models.items():
        ckpt = train_and_export(folder, model_name.split()[-1].lower(), overrides)
        servers = {
            "plain FastAPI": [sys.executable, __file__, "--plain", str(ckpt)],
            "trainlab torch": [sys.executable, "serve.py", f"ckpt={ckpt}", "port=0", "access_log=false", "num_threads=1"],
            "trainlab ONNX": [sys.executable, "serve.py", f"ckpt={ckpt.parent.parent / 'best.onnx'}", "port=0", "access_log=false", "num_threads=1"],
        }  # fmt: skip
        started = {name: start(command) for name, command in servers.items()}
        try:
            results: dict[tuple[str, int], list[tuple[float, float, float]]] = defaultdict(list)
            floor = min(
                summary(asyncio.run(burst(started["plain FastAPI"][1], body, 1, 200, "/health"))[0])[1]
                for _ in range(2)
            )
            batched: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])  # requests, forward passes
            cpu: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
            for _ in range(args.rounds):
                for concurrency in CONCURRENCY:
                    for name, (process, url) in started.items():
                        n = args.requests // 4 if concurrency == 1 else args.requests
                        before = batching(url)
                        latencies, used = asyncio.run(burst(url, body, concurrency, n, pid=process.pid))
                        cpu[(name, concurrency)].append((used[0] / n * 1000, used[1] / latencies[-1]))
                        results[(name, concurrency)].append(summary(latencies))
                        if before:
                            after = batching(url)
                            for i, key in enumerate(("requests", "forward_passes")):
                                batched[(name, concurrency)][i] += after[key] - before[key]
        finally:
            for process, _ in started.values():
                process.terminate()
                process.wait(timeout=10)
        times = forward_times(ckpt, body)
        for (name, concurrency), rounds in results.items():
            plain = results[("plain FastAPI", concurrency)]
            rps, p50, p99 = max(rounds)  # the best round: other jobs only ever add time
            throughput = np.median([r[0] / q[0] for r, q in zip(rounds, plain, strict=True)])  # same round
            latency = np.median([r[1] / q[1] for r, q in zip(rounds, plain, strict=True)])
            requests, passes = batched.get((name, concurrency), (0, 0))
            per_pass = f"{requests / passes:.1f}" if passes else ""
            cpu_ms, main_busy = np.median(cpu[(name, concurrency)], axis=0)
            rows.append(
                (model_name, name, concurrency, rps, p50, p99, throughput, latency, per_pass, cpu_ms, main_busy)
            )
        rows.append((model_name, "forward", times, floor))
    print(f"load average before {load_before}, after {os.getloadavg()}; {os.cpu_count()} cores")
    print(
        "| model | server | concurrency | requests/s | p50 ms | p99 ms | throughput vs plain (median of rounds) | p50 vs plain | requests per forward pass | server CPU ms per request | event-loop thread busy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row[1] == "forward":
            model_name, _, times, floor = row
            print(
                f"| {model_name} | model alone, ms per input at batch 1 / 16: torch {times['torch_b1']:.3f} / "
                f"{times['torch_b16']:.3f}, ONNX Runtime {times['onnx_b1']:.3f} / {times['onnx_b16']:.3f}; PNG decode {times['decode']:.3f} ms; GET /health round trip "
                f"{floor:.3f} ms | | | | | | | | | |"
            )
        else:
            model_name, name, concurrency, rps, p50, p99, throughput, latency, per_pass, cpu_ms, main_busy = row
            print(
                f"| {model_name} | {name} | {concurrency} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {throughput:.2f}x | {latency:.2f}x | {per_pass} | {cpu_ms:.2f} | {main_busy:.0%} |"
            )


if __name__ == "__main__":
    main()
