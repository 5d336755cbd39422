"""Benchmark: trainlab's server (torch and ONNX Runtime backends, one worker process and its default of one
per core) against a minimal hand-written FastAPI endpoint around the same model (one forward pass per
request) and against LitServe serving the same ONNX model, for the digits MLP and the MNIST CNN.

    python benchmarks/serve_speed.py                        # about 10 minutes on 2 cores
    python benchmarks/serve_speed.py --rounds 1 --requests 100 --models cnn

Each model is trained briefly (its weights do not change its speed) and exported; the servers run as
processes on 127.0.0.1 side by side (uvicorn with httptools and uvloop, as ``uvicorn[standard]`` installs
them for all), access logs off, one compute thread per process (``OMP_NUM_THREADS=1``; trainlab's default
workers: its share of the cores, one thread each on 2 cores). LitServe (``pip install -e ".[bench]"``)
runs with its recommended CPU settings: batching on (16 inputs, 5 ms), 1 and 2 workers per device, and 2 with
its ZeroMQ queue (`fast_queue`). Only the server measured runs: the others are stopped (SIGSTOP) meanwhile,
since LitServe's idle workers poll. A
client in this process (aiohttp, asyncio) sends each server bursts of single-PNG multipart requests at
concurrency 1 and 16, the servers taking turns within each round; a variant's figures are its best round
(other jobs on a shared machine only ever add time), its ratios to the plain endpoint the median of the
rounds' ratios (each round's servers ran one after the other, under the same load); the targets of issue
29 compare trainlab's default workers with its one-process figure and LitServe's best setting the same way.
Also measured: the model's own forward time per input (torch eager and ONNX Runtime, batch 1 and 16), the
PNG decode, and a ``GET /health`` round trip (the HTTP floor of a request); from trainlab's ``GET /health``,
the requests per forward pass at each concurrency (how the server batched them); and each server's CPU time
per request (all its processes) and the share of the burst its busiest event loop was running (Linux's
/proc): where the time goes.
"""

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
LITSERVE = str(ROOT / "benchmarks" / "litserve_server.py")
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


def start(command: list[str], port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A server process (in a process group of its own, with its workers) and its address: once uvicorn
    printed it, or, for a server told its ``port``, once ``GET /health`` answers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if port is not None:
        url = f"http://127.0.0.1:{port}"
        threading.Thread(target=process.stderr.read, daemon=True).start()  # drained, never full
        while process.poll() is None:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=60) as answer:
                if answer.status == 200:
                    return process, url
            time.sleep(0.5)  # a server starting up, which prints nothing to wait on: ask again
        raise RuntimeError(f"{command} exited with {process.wait()}")
    for line in process.stderr:
        found = re.search(r"Uvicorn running on (http://\S+)", line)
        if found:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, found[1]
    raise RuntimeError(f"{command} exited with {process.wait()}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pause_others(started: dict[str, tuple[subprocess.Popen, str]], running: str) -> None:
    """SIGCONT the server ``running`` (its whole process group) and SIGSTOP every other: a server waiting for
    its turn takes no CPU from the one measured (LitServe's workers poll their queues when idle)."""
    for name, (process, _) in started.items():
        os.killpg(process.pid, signal.SIGCONT if name == running else signal.SIGSTOP)


def ready_workers(url: str, workers: int) -> None:
    """Ask trainlab's ``GET /health`` until ``workers`` worker processes have answered it (each writes its row
    once its app is built); a round trip each time."""
    while len((batching(url) or {"workers": [None] * workers})["workers"]) < workers:
        pass


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
    the burst's wall time; and the CPU time that the server's process group ``pid`` used meanwhile
    (``cpu_seconds``), the busiest main thread's share of the burst, and the client's CPU time. Each
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
    cpu_before = cpu_seconds(pid) if pid else None
    client_before = time.process_time()
    began = time.perf_counter()
    go.set()
    await asyncio.gather(*clients)
    wall = time.perf_counter() - began
    client = time.process_time() - client_before
    latencies.append(wall)  # the last entry: the burst's wall time
    if cpu_before is None:
        return latencies, []
    total, main_threads = cpu_seconds(pid)
    busiest = max((main_threads[p] - cpu_before[1].get(p, 0.0) for p in main_threads), default=0.0)
    return latencies, [total - cpu_before[0], busiest / wall, client]


def batching(url: str) -> dict | None:
    """A trainlab server's counts of requests and forward passes (``GET /health``); None for the others."""
    with urllib.request.urlopen(f"{url}/health") as answer:
        health = answer.read()
    return json.loads(health) if b"forward_passes" in health else None


def cpu_seconds(group: int) -> tuple[float, dict[int, float]]:
    """CPU time (user + system, s) of a server's processes (its process group, Linux's /proc) together, and of
    each one's main thread (an event loop, in an HTTP server process), by process id."""

    def used(stat: Path) -> tuple[int, float]:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[2]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    total, main_threads = 0.0, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pgrp, seconds = used(stat)
            if pgrp == group:
                total += seconds
                main_threads[int(stat.parent.name)] = used(stat.parent / "task" / stat.parent.name / "stat")[1]
    return total, main_threads


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


SERVERS = {  # what each server is, for the report
    "plain FastAPI": "one async endpoint: decode, forward pass, answer; no batching",
    "trainlab torch": "serve.py on the .ckpt, workers=1, num_threads=1",
    "trainlab ONNX": "serve.py on the .onnx, workers=1, num_threads=1: the one-process figure",
    "trainlab ONNX, default workers": "serve.py on the .onnx with its defaults: a worker per core, its share of the cores as threads",
    "LitServe, 1 worker": "LitServe 0.2.19 on the .onnx (ONNX Runtime, one thread), batches of up to 16 within 5 ms, 1 worker",
    "LitServe, 2 workers": "the same with 2 workers per device",
    "LitServe, 2 workers, fast queue": "the same with LitServe's ZeroMQ queue (fast_queue=True)",
}  # fmt: skip


def servers(ckpt: Path) -> dict[str, tuple[list[str], int | None]]:
    """The command of each server in ``SERVERS`` for a trained model, and the port of those told one."""
    onnx = str(ckpt.parent.parent / "best.onnx")
    serve = [sys.executable, "serve.py", "port=0", "access_log=false"]
    one = ["workers=1", "num_threads=1"]
    ports = [free_port(), free_port(), free_port()]
    return {
        "plain FastAPI": ([sys.executable, __file__, "--plain", str(ckpt)], None),
        "trainlab torch": ([*serve, f"ckpt={ckpt}", *one], None),
        "trainlab ONNX": ([*serve, f"ckpt={onnx}", *one], None),
        "trainlab ONNX, default workers": ([*serve, f"ckpt={onnx}"], None),
        "LitServe, 1 worker": ([sys.executable, LITSERVE, onnx, "--workers", "1", "--port", str(ports[0])], ports[0]),
        "LitServe, 2 workers": ([sys.executable, LITSERVE, onnx, "--workers", "2", "--port", str(ports[1])], ports[1]),
        "LitServe, 2 workers, fast queue": ([sys.executable, LITSERVE, onnx, "--workers", "2", "--port", str(ports[2]), "--fast-queue"], ports[2]),
    }  # fmt: skip


def targets(model_name: str, results: dict) -> list[str]:
    """The serving targets of issue 29, for the servers measured (medians over rounds of the same round's
    ratios; LitServe's best setting: the fastest of its settings in each round)."""

    def ratio(a: str, b: str, concurrency: int, column: int) -> float:
        rounds = zip(results[(a, concurrency)], results[(b, concurrency)], strict=True)
        return float(np.median([x[column] / y[column] for x, y in rounds]))

    default, one = "trainlab ONNX, default workers", "trainlab ONNX"
    checks = []
    if (default, 16) in results and (one, 16) in results:
        scaling, lone = ratio(default, one, 16, 0), ratio(default, one, 1, 1)
        checks += [
            (f"{model_name}: default workers at 16 clients >= 1.4x the one-process requests/s: {scaling:.2f}x", scaling >= 1.4),
            (f"{model_name}: default workers, a lone request's p50 <= the one-process p50: {lone:.2f}x", lone <= 1.0),
        ]  # fmt: skip
    litserve = [results[(name, 16)] for name in SERVERS if name.startswith("LitServe") and (name, 16) in results]
    if (default, 16) in results and litserve:
        best = [max(r[0] for r in same_round) for same_round in zip(*litserve, strict=True)]
        versus = float(np.median([d[0] / b for d, b in zip(results[(default, 16)], best, strict=True)]))
        checks.append(
            (
                f"{model_name}: default workers at 16 clients >= 3x LitServe's best setting: {versus:.2f}x",
                versus >= 3,
            )
        )
    return [f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in checks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"), help="holds MNIST/raw")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=960, help="per burst (concurrency 1: a quarter)")
    parser.add_argument("--models", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"])
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
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
    models = {name: setting for name, setting in models.items() if name.split()[-1].lower() in args.models}
    chosen = ["plain FastAPI", *(name for name in args.servers if name != "plain FastAPI")]  # the baseline
    rows, checks = [], []
    for model_name, (overrides, body) in models.items():
        ckpt = train_and_export(folder, model_name.split()[-1].lower(), overrides)
        commands, started = servers(ckpt), {}
        try:
            for name in chosen:
                started[name] = start(*commands[name])
                if name.startswith("trainlab"):
                    ready_workers(started[name][1], len(os.sched_getaffinity(0)) if "default" in name else 1)
            results: dict[tuple[str, int], list[tuple[float, float, float]]] = defaultdict(list)
            pause_others(started, "plain FastAPI")
            floor = min(
                summary(asyncio.run(burst(started["plain FastAPI"][1], body, 1, 200, "/health"))[0])[1]
                for _ in range(2)
            )
            batched: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])  # requests, forward passes
            cpu: dict[tuple[str, int], list[tuple[float, float, float]]] = defaultdict(list)
            split: dict[tuple[str, int], list[str]] = defaultdict(list)  # requests per worker, each round
            for _ in range(args.rounds):
                for concurrency in CONCURRENCY:
                    for name, (process, url) in started.items():
                        pause_others(started, name)
                        n = args.requests // 4 if concurrency == 1 else args.requests
                        before = batching(url)
                        latencies, used = asyncio.run(burst(url, body, concurrency, n, pid=process.pid))
                        cpu[(name, concurrency)].append((used[0] / n * 1000, used[1], used[2] / n * 1000))
                        results[(name, concurrency)].append(summary(latencies))
                        if before:
                            after = batching(url)
                            for i, key in enumerate(("requests", "forward_passes")):
                                batched[(name, concurrency)][i] += after[key] - before[key]
                            if len(after["workers"]) > 1:  # how the connections spread over the workers
                                split[(name, concurrency)].append(
                                    "/".join(
                                        str(a["requests"] - b["requests"])
                                        for a, b in zip(after["workers"], before["workers"], strict=True)
                                    )
                                )
        finally:
            for process, _ in started.values():  # each server's whole group: LitServe's workers outlive it
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
        times = forward_times(ckpt, body)
        for (name, concurrency), rounds in results.items():
            plain = results[("plain FastAPI", concurrency)]
            rps, p50, p99 = max(rounds)  # the best round: other jobs only ever add time
            throughput = np.median([r[0] / q[0] for r, q in zip(rounds, plain, strict=True)])  # same round
            latency = np.median([r[1] / q[1] for r, q in zip(rounds, plain, strict=True)])
            requests, passes = batched.get((name, concurrency), (0, 0))
            per_pass = f"{requests / passes:.1f}" if passes else ""
            cpu_ms, main_busy, client_ms = np.median(cpu[(name, concurrency)], axis=0)
            per_worker = ", ".join(split.get((name, concurrency), []))
            rows.append(
                f"| {model_name} | {name} | {concurrency} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {throughput:.2f}x | "
                f"{latency:.2f}x | {per_pass} | {cpu_ms:.2f} | {main_busy:.0%} | {client_ms:.2f} | {per_worker} |"
            )
        rows.append(
            f"| {model_name} | model alone, ms per input at batch 1 / 16: torch {times['torch_b1']:.3f} / "
            f"{times['torch_b16']:.3f}, ONNX Runtime {times['onnx_b1']:.3f} / {times['onnx_b16']:.3f}; PNG decode "
            f"{times['decode']:.3f} ms; GET /health round trip {floor:.3f} ms | | | | | | | | | | | |"
        )
        checks += targets(model_name, results)
    print(f"load average before {load_before}, after {os.getloadavg()}; {os.cpu_count()} cores")
    print(
        "| model | server | concurrency | requests/s | p50 ms | p99 ms | throughput vs plain (median of rounds) | p50 vs plain | requests per forward pass | server CPU ms per request | busiest event loop | client CPU ms per request | requests per worker, each round |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(f"- {name}: {what}" for name, what in SERVERS.items() if name in chosen))
    print()
    print("\n".join(checks))


if __name__ == "__main__":
    main()
