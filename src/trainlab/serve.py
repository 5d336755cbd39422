"""A REST server for a trained model: FastAPI on uvicorn, a ``.ckpt`` in torch or an ``.onnx`` in ONNX
Runtime (``trainlab.inference.Predictor``), the same API and answers.

    GET  /health     {"status": "ok"}, and the batching so far (``Batcher.stats``)
    GET  /metadata   task, classes, input spec, the training run's test metrics, backend
    POST /predict    image files (multipart), or JSON {"images": [base64...]}, {"rows": [{column: value}]},
                     {"inputs": [raw input arrays]}; answers {"predictions": [{label, class_index,
                     probabilities} or {value}, ...]}, one per input, in order

Concurrent requests are batched (``Batcher``): one worker thread runs the model, and while it does the
event loop keeps reading requests, which form the next batch (up to ``max_batch_size`` inputs, waiting up
to ``max_wait_ms`` for requests that are still being read); a lone request to a fast model runs in the event
loop (``Batcher.inline``). ``GET /health`` says how the inputs were batched. Every bad request
is a 4xx JSON ``{"error": ...}`` that names the problem; uvicorn stops gracefully on SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.exceptions import HTTPException

from trainlab.dataloader import InputKind
from trainlab.dataloader.base import Inputs, count
from trainlab.errors import ConfigError, DataError
from trainlab.inference import Predictor

log = logging.getLogger(__name__)

INLINE_S = 0.001  # a lone request whose forward pass takes less runs in the event loop (Batcher.inline)


class BadRequest(Exception):
    """A request the server cannot answer, with its HTTP status (4xx) and the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def request_model(kind: InputKind) -> type[BaseModel]:
    """The JSON body of ``POST /predict`` for a model of ``kind`` inputs: one of two fields, each a list (one
    input or many): the kind's own (``"images"``, ``"rows"``...) or ``"inputs"``, raw inputs as arrays."""
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        **{
            kind.request_field: (
                list[kind.request_type] | None,
                Field(None, description=kind.request_description),
            ),
            "inputs": (
                list[Any] | None,
                Field(None, description=f"raw inputs as arrays of numbers ({kind.name})"),
            ),
        },
    )


class Batcher:
    """Answers inputs with the predictor, on batches gathered from concurrent requests, in one worker thread.

    A request's inputs join the pending ones, and a batch starts as soon as the worker is free, with every
    input pending (up to ``max_batch_size``); while requests are still being read it waits for them, up to
    ``max_wait_ms``. While a batch runs, the event loop reads the next requests, which form the next batch:
    the batches are as large as the load makes them, and the model runs beside the HTTP work, not in turn
    with it. A lone request to a fast model runs in the event loop (``inline``)."""

    def __init__(self, predictor: Predictor, max_batch_size: int, max_wait_ms: float):
        self.predictor, self.max_batch_size, self.max_wait = predictor, max_batch_size, max_wait_ms / 1000
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
        try:
            yield
        finally:
            self.reading -= 1

    def serving(self) -> None:
        """Called once the server has started: its tasks so far are its own, any later one is a request's."""
        self.server_tasks = asyncio.all_tasks()

    async def __call__(self, raw: Inputs) -> list[dict[str, Any]]:
        """The answers (``Predictor.answers``) to checked raw inputs."""
        self.requests, self.inputs = self.requests + 1, self.inputs + count(raw)
        if not self.busy and not self.pending and self.inline(raw):
            return self.timed(raw)
        future = asyncio.get_running_loop().create_future()
        self.pending.append((raw, future))
        self.start()
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

    def timed(self, raw: Inputs) -> list[dict[str, Any]]:
        """The answers to a batch (one forward pass, one softmax), and the forward pass's time per input."""
        begin = time.perf_counter()
        outputs = self.predictor.forward(raw)
        self.last_forward_s = (time.perf_counter() - begin) / count(raw)
        self.forward_passes, self.largest_batch = self.forward_passes + 1, max(self.largest_batch, count(raw))
        return self.predictor.answers(outputs)

    def stats(self) -> dict[str, int]:
        """The requests and inputs answered or waiting, the forward passes that answered them, the largest
        batch so far, and the requests waiting for a batch now and being read now."""
        return {
            "requests": self.requests,
            "inputs": self.inputs,
            "forward_passes": self.forward_passes,
            "largest_batch": self.largest_batch,
            "pending": len(self.pending),
            "reading": self.reading,
        }

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` (declared or streamed) answers 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await error_response(413, self.too_large())(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BadRequest(413, self.too_large())
            return message

        await self.app(scope, limited_receive, send)

    def too_large(self) -> str:
        return (
            f"the request body is over the limit of {self.max_bytes / 1e6:g} MB (max_body_mb); send fewer inputs"
        )


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(predictor: Predictor, cfg: DictConfig) -> FastAPI:
    """The FastAPI application serving ``predictor`` with the settings of ``conf/serve.yaml``."""
    spec, kind, max_inputs = predictor.spec, predictor.kind, cfg.max_inputs
    body_model = request_model(kind)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher.serving()
        yield
        app.state.batcher.close()

    app = FastAPI(
        title=f"trainlab: {predictor.source.name}",
        description=f"A {spec.task} model on {spec.kind} inputs, served with {predictor.backend}.",
        lifespan=lifespan,
    )
    app.state.batcher = Batcher(predictor, cfg.max_batch_size, cfg.max_wait_ms)
    app.add_middleware(BodyLimit, max_bytes=int(cfg.max_body_mb * 1e6))

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, error: BadRequest):
        return error_response(error.status, str(error))

    @app.exception_handler(DataError)
    async def bad_data(request: Request, error: DataError):
        return error_response(400, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return error_response(422, describe(error.errors()))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception):  # a bug in trainlab, still answered as JSON
        log.exception("error answering %s", request.url.path)
        return error_response(500, f"internal error ({type(error).__name__}: {error})")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """``{"status": "ok"}``, and how the inputs served so far were batched."""
        return {"status": "ok"} | app.state.batcher.stats()

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return predictor.metadata() | {"max_inputs": max_inputs, "max_body_mb": cfg.max_body_mb}

    body_schema = {"required": True, "content": {"application/json": {"schema": body_model.model_json_schema()}}}
    if kind.file_uploads:
        files = {"type": "array", "items": {"type": "string", "format": "binary"}}
        body_schema["content"]["multipart/form-data"] = {
            "schema": {"type": "object", "properties": {"file": files}}
        }

    @app.post("/predict", openapi_extra={"requestBody": body_schema})
    async def predict(request: Request) -> JSONResponse:
        """Files (multipart, any field name, where the model takes them: images) or JSON (the model's kind of
        input, e.g. images as base64 or rows, or raw inputs); one answer per input, in order:
        ``{"predictions": [{"label", "class_index", "probabilities"}]}``, or ``[{"value"}]`` for regression."""
        batcher: Batcher = request.app.state.batcher
        with batcher.reading_request():
            raw = predictor.check(await read_request(request, kind, body_model, max_inputs))
        # a JSONResponse: the answers are plain data already, FastAPI need not validate them again
        return JSONResponse({"predictions": await batcher(raw)})

    return app


async def read_request(request, kind: InputKind, body_model: type[BaseModel], max_inputs: int) -> Inputs:
    """The raw inputs of a ``POST /predict`` request."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            async with request.form(max_files=max_inputs, max_fields=max_inputs) as form:  # closes the files
                files = [
                    (value.filename or key, await value.read())
                    for key, value in form.multi_items()
                    if not isinstance(value, str)
                ]
        except HTTPException as error:  # starlette's: too many files or fields, a malformed form
            status = 413 if "Too many" in str(error.detail) else error.status_code
            raise BadRequest(
                status, f"the form could not be read: {error.detail} (max_inputs={max_inputs})"
            ) from None
        if not files:
            raise BadRequest(400, "the form holds no file; send images as -F file=@photo.png")
        return kind.from_files(files)
    if not content_type.startswith("application/json"):
        raise BadRequest(
            415, f"content-type {content_type or 'none'}: send multipart/form-data files or application/json"
        )
    try:
        body = body_model.model_validate_json(await request.body())
    except ValidationError as error:
        raise BadRequest(422, describe(error.errors())) from None
    given = [name for name, value in body if value is not None]
    if len(given) != 1:
        raise BadRequest(422, f"give one of {kind.request_field} or inputs, not {given or 'none'}")
    values = getattr(body, given[0])
    if not values:
        raise BadRequest(422, f"{given[0]} is empty; give at least one input")
    if len(values) > max_inputs:
        raise BadRequest(
            413, f"{len(values)} inputs are more than the limit of {max_inputs} per request (max_inputs)"
        )
    if given[0] == "inputs":
        try:
            return kind.from_arrays(values)
        except DataError as error:
            raise BadRequest(422, str(error)) from None
    return kind.from_request(values)


def describe(errors: list[dict[str, Any]]) -> str:
    """pydantic's validation errors as one line: ``rows.0: Input should be a valid dictionary; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5])


def serve(cfg: DictConfig) -> None:
    """Load ``cfg.ckpt`` (a .ckpt or an .onnx), then serve it until SIGTERM or Ctrl-C."""
    import uvicorn

    for key in ("max_batch_size", "max_inputs"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be at least 1, got {cfg[key]}")
    predictor = Predictor.load(Path(to_absolute_path(cfg.ckpt)), cfg.device, cfg.num_threads)
    log.info(
        "serving %s (%s, %s on %s inputs; test metrics %s)",
        predictor.source,
        predictor.backend,
        predictor.spec.task,
        predictor.spec.kind,
        json.dumps(predictor.test_metrics),
    )
    uvicorn.run(
        create_app(predictor, cfg),
        host=cfg.host,
        port=cfg.port,
        access_log=cfg.access_log,
        timeout_graceful_shutdown=cfg.graceful_shutdown_s,
        log_level="info",
    )
