"""Batching in one server process: the inputs of concurrent requests answered in one forward pass
(``Batcher``), and the counts of every worker process that ``GET /health`` reports (``WorkerTable``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import math
import mmap
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainlab.dataloader.base import Inputs, count
from trainlab.inference import Predictor

INLINE_S = 0.001  # a lone request whose forward pass takes less runs in the event loop (Batcher.inline)


class WorkerTable:
    """The ``/health`` counts of every worker process of one server, which any of them reads to answer: a
    folder (in /dev/shm, memory, where there is one) holding a file per worker, named by its process id, of
    six 8-byte counts that the worker maps into memory and overwrites in place as they change
    (``Batcher.publish``, always from its event loop). ``serve`` makes the folder and removes it at the end."""

    FIELDS = ("requests", "inputs", "forward_passes", "largest_batch", "pending", "reading")
    ROW = struct.Struct(f"<{len(FIELDS)}q")

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @classmethod
    def create(cls) -> WorkerTable:
        memory = Path("/dev/shm")
        return cls(tempfile.mkdtemp(prefix="trainlab-serve-", dir=memory if memory.is_dir() else None))

    def join(self) -> mmap.mmap:
        """This process's row: its file, mapped."""
        path = self.folder / str(os.getpid())
        path.write_bytes(bytes(self.ROW.size))
        with open(path, "r+b") as file:
            return mmap.mmap(file.fileno(), self.ROW.size)

    def rows(self) -> dict[int, dict[str, int]]:
        """Every worker's counts, by process id (a worker that has begun but not yet written its row: none)."""
        rows = {}
        for path in self.folder.iterdir():
            with contextlib.suppress(OSError, ValueError, struct.error):
                rows[int(path.name)] = dict(zip(self.FIELDS, self.ROW.unpack(path.read_bytes()), strict=True))
        return rows

    def totals(self) -> dict[str, Any]:
        """What ``GET /health`` answers: the counts of all workers together (the largest batch: of any), this
        worker's process id, and each worker's counts."""
        rows = self.rows()
        totals = {name: sum(row[name] for row in rows.values()) for name in self.FIELDS}
        totals["largest_batch"] = max((row["largest_batch"] for row in rows.values()), default=0)
        workers = [{"pid": pid, **row} for pid, row in sorted(rows.items())]
        return totals | {"worker": os.getpid(), "workers": workers}

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Batcher:
    """Answers inputs with the predictor, on batches gathered from concurrent requests, in one worker thread.

    A request's inputs join the pending ones, and a batch starts as soon as the worker is free, with every
    input pending (up to ``max_batch_size``); while requests are still being read it waits for them, up to
    ``max_wait_ms``. While a batch runs, the event loop reads the next requests, which form the next batch:
    the batches are as large as the load makes them, and the model runs beside the HTTP work, not in turn
    with it. A lone request to a fast model runs in the event loop (``inline``). Its counts go to ``row``,
    this worker's row of the server's ``WorkerTable``."""

    def __init__(self, predictor: Predictor, max_batch_size: int, max_wait_ms: float, row: mmap.mmap):
        self.predictor, self.max_batch_size, self.max_wait = predictor, max_batch_size, max_wait_ms / 1000
        self.row = row
        self.pending: collections.deque[tuple[Inputs, asyncio.Future[list]]] = collections.deque()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.reading = 0  # requests being read whose inputs will come to the pending ones
        self.waiting: asyncio.TimerHandle | None = None  # a batch waiting for requests being read
        self.busy = False  # the worker runs a batch
        self.last_forward_s = math.inf  # per input, of the last batch; the first one runs in the thread
        self.server_tasks: set[asyncio.Task] = set()  # the server's own tasks (``serving``), no request's
        self.requests = self.inputs = self.forward_passes = self.largest_batch = 0  # what /health reports

    @contextlib.contextmanager
    def reading_request(self) -> Iterator[None]:
        """Around the reading of a request: a batch may wait for it (up to ``max_wait_ms``)."""
        self.reading += 1
        self.publish()
        try:
            yield
        finally:
            self.reading -= 1
            self.publish()

    def serving(self) -> None:
        """Called once the server has started: its tasks so far are its own, any later one is a request's."""
        self.server_tasks = asyncio.all_tasks()

    async def __call__(self, raw: Inputs) -> list[dict[str, Any]]:
        """The answers (``Predictor.answers``) to checked raw inputs."""
        self.requests, self.inputs = self.requests + 1, self.inputs + count(raw)
        if not self.busy and not self.pending and self.inline(raw):
            answers = self.timed(raw)
            self.publish()
            return answers
        future = asyncio.get_running_loop().create_future()
        self.pending.append((raw, future))
        self.start()
        self.publish()
        return await future

    def inline(self, raw: Inputs) -> bool:
        """Whether to run the model in the event loop: for a request that is alone (no other is being read
        or has arrived) when at the last forward pass's time per input its inputs take under ``INLINE_S``.
        The event loop has nothing else to do meanwhile, and handing over to a thread and back costs more
        than such a forward pass (on a busy machine each wake-up of a thread waits for a core). "Arrived"
        counts the requests whose handlers have not begun: a handler runs from its start to here without
        giving way when the body came in one piece, so those that came with it have a task and no more."""
        return (
            not self.reading
            and self.last_forward_s * count(raw) < INLINE_S
            and len(asyncio.all_tasks() - self.server_tasks) == 1  # this request's task alone
        )

    def start(self) -> None:
        """Start a batch of the pending inputs when the worker is free; while requests are being read and
        the batch is not full, first wait for them up to ``max_wait_ms``."""
        if self.busy or not self.pending:
            return
        if self.reading and sum(count(raw) for raw, _ in self.pending) < self.max_batch_size:
            if self.waiting is None:
                self.waiting = asyncio.get_running_loop().call_later(self.max_wait, self.run)
            return
        self.run()

    def run(self) -> None:
        """Hand the pending inputs (up to ``max_batch_size``) to the worker as one batch."""
        if self.waiting:
            self.waiting.cancel()
            self.waiting = None
        batch, size = [], 0
        while self.pending and size < self.max_batch_size:
            batch.append(self.pending.popleft())
            size += count(batch[-1][0])
        raws, futures = zip(*batch, strict=True)
        self.busy = True
        done = asyncio.get_running_loop().run_in_executor(
            self.executor, self.timed, self.predictor.kind.collate(list(raws))
        )
        done.add_done_callback(functools.partial(self.answer, raws, futures))

    def answer(self, raws: tuple[Inputs, ...], futures: tuple[asyncio.Future, ...], done: asyncio.Future) -> None:
        """Each waiting request's part of a batch's answers, or the batch's error; then the next batch."""
        self.busy = False
        try:
            answers = iter(done.result())
        except (Exception, asyncio.CancelledError) as error:  # a bug: each waiting request answers 500
            for future in futures:
                if not future.done():  # a client that went away cancelled its future
                    future.set_exception(error)
        else:
            for raw, future in zip(raws, futures, strict=True):
                part = list(itertools.islice(answers, count(raw)))  # taken in order, whoever still waits
                if not future.done():
                    future.set_result(part)
        self.start()
        self.publish()

    def timed(self, raw: Inputs) -> list[dict[str, Any]]:
        """The answers to a batch (one forward pass, one softmax), and the forward pass's time per input."""
        begin = time.perf_counter()
        outputs = self.predictor.forward(raw)
        self.last_forward_s = (time.perf_counter() - begin) / count(raw)
        self.forward_passes, self.largest_batch = self.forward_passes + 1, max(self.largest_batch, count(raw))
        return self.predictor.answers(outputs)

    def publish(self) -> None:
        """Write this worker's counts into its row of the ``WorkerTable``: the requests and inputs answered or
        waiting, the forward passes that answered them, the largest batch so far, and the requests waiting for
        a batch now and being read now."""
        counts = (
            self.requests,
            self.inputs,
            self.forward_passes,
            self.largest_batch,
            len(self.pending),
            self.reading,
        )
        WorkerTable.ROW.pack_into(self.row, 0, *counts)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.row.close()
