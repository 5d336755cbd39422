"""A REST server for a trained model: FastAPI on uvicorn, a ``.ckpt`` in torch or an ``.onnx`` in ONNX
Runtime (``trainlab.inference.Predictor``), the same API and answers.

    GET  /health     {"status": "ok"}, and the batching so far (``Batcher.stats``)
    GET  /metadata   task, classes, input spec, the training run's test metrics, backend
    POST /predict    JSON with the model's kind of input ({"images": [base64...]}, {"rows": [{column: value}]}...)
                     or raw inputs ({"inputs": [arrays]}), or files (multipart, for images); answers
                     {"predictions": [{label, class_index, probabilities} or {value}, ...]}, one per input
    GET  /docs       the API (OpenAPI: /openapi.json; also /redoc), its pages' scripts served from here

The server runs ``workers`` processes (default: one per core, each with its share of the cores as
threads), which share the listening socket: uvicorn's supervisor starts them, each builds its own app
(``app_from_env``) and stops on SIGTERM within ``graceful_shutdown_s``. In each, concurrent requests are
batched (``Batcher``): one worker thread runs the model, and while it does the event loop keeps reading
requests, which form the next batch (up to ``max_batch_size`` inputs, waiting up to ``max_wait_ms`` for
requests that are still being read); a lone request to a fast model runs in the event loop
(``Batcher.inline``). ``GET /health`` says how each worker batched its inputs (``WorkerTable``), and in all.
The event loop only moves bytes: a request's body is parsed and its inputs read (images decoded) in a thread
(``DECODE_THREADS``), so that a heavy request never holds up the others nor ``/health``, except a small
upload that its headers say decodes to a few pixels (``INLINE_BYTES``, ``INLINE_PIXELS``: well under a
millisecond), which is read where it is, the hand-over to a thread and back costing more; images are
refused from their headers beyond ``max_pixels``. What a request holds is the model's kind of input's to read (``InputKind``:
``from_request``, ``from_files``, ``from_arrays``) and to describe in the OpenAPI schema. Every bad request is a 4xx JSON ``{"error": ...}`` that names
the problem, each status documented in the OpenAPI schema, which says exactly what this model takes;
uvicorn stops gracefully on SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import json
import logging
import logging.config
import math
import mmap
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from trainlab.dataloader import InputKind
from trainlab.dataloader.base import Inputs, count
from trainlab.errors import ConfigError, DataError, TooLarge
from trainlab.inference import Predictor

log = logging.getLogger(__name__)

INLINE_S = 0.001  # a lone request whose forward pass takes less runs in the event loop (Batcher.inline)
# Threads that parse request bodies and decode images: two, so that a request at the max_pixels limit (about
# a second) does not hold up small ones, while at most two such decodes (up to 5 bytes a pixel each) run at once.
DECODE_THREADS = 2
# A multipart upload of at most INLINE_BYTES whose images' headers say they decode to at most INLINE_PIXELS in
# all (128x128) is read in the event loop: its decode takes well under a millisecond (a 28x28 PNG: 0.04 ms),
# less than the hand-over to a decoding thread and back (about 0.08 ms, more on a busy machine).
INLINE_BYTES, INLINE_PIXELS = 16_384, 16_384
SETTINGS_VARIABLE = "TRAINLAB_SERVE_SETTINGS"  # how serve() hands its settings to its worker processes


class BadRequest(Exception):
    """A request the server cannot answer, with its HTTP status (4xx) and the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ErrorBody(BaseModel):
    """Every answer but a prediction (any 4xx or 5xx status)."""

    error: str = Field(description="what is wrong, and how to fix it")


ERRORS = {
    400: "The body follows the schema, but its content cannot be used (e.g. a file that is no image or does "
    "not decode, base64 that is not, inputs of another shape than the model's, a row with an unknown column "
    "or a feature column that no row has), or an answer is not a finite number (inputs far outside the "
    "training data).",
    413: "Too large: a body over max_body_mb, more inputs than max_inputs, or images that would decode to more "
    "pixels than max_pixels (read from their headers).",
    415: "A content type other than multipart/form-data or application/json.",
    422: "A JSON body that the schema refuses: broken JSON, none or several of its fields, an empty list, a "
    "value of another type, an unknown field.",
    500: "A bug in trainlab, named in the message; the server keeps serving.",
}


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


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses: each the ``{"error": ...}`` body."""
    return {status: {"model": ErrorBody, "description": ERRORS[status]} for status in statuses}


def create_app(predictor: Predictor, cfg: DictConfig, table: WorkerTable) -> FastAPI:
    """The FastAPI application serving ``predictor`` with the settings of ``conf/serve.yaml``, its counts in a
    row of the server's ``table``."""
    spec, kind, max_inputs, max_pixels = predictor.spec, predictor.kind, cfg.max_inputs, int(cfg.max_pixels)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
    body_model = request_model(kind)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher.serving()
        yield
        decoder.shutdown(wait=True, cancel_futures=True)
        app.state.batcher.close()

    app = FastAPIOffline(  # /docs and /redoc with Swagger UI and ReDoc from the package, not from a CDN
        title=f"trainlab: {predictor.source.name}",
        description=f"A {spec.task} model on {spec.kind} inputs, served with {predictor.backend}. Errors are "
        'JSON `{"error": "..."}` with a 4xx status (5xx: a bug); any other path answers 404, any other '
        "method 405 with an `Allow` header.",
        lifespan=lifespan,
    )
    app.state.batcher = Batcher(predictor, cfg.max_batch_size, cfg.max_wait_ms, table.join())
    app.add_middleware(BodyLimit, max_bytes=int(cfg.max_body_mb * 1e6))

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, error: BadRequest):
        return error_response(error.status, str(error))

    @app.exception_handler(DataError)
    async def bad_data(request: Request, error: DataError):
        return error_response(400, str(error))

    @app.exception_handler(TooLarge)
    async def too_large(request: Request, error: TooLarge):
        return error_response(413, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):  # 404, 405 (its Allow header kept)
        return error_response(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return error_response(422, describe(error.errors()))

    @app.exception_handler(ClientDisconnect)
    async def went_away(request: Request, error: ClientDisconnect):  # nobody to answer: one line, no traceback
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("%s %s: %s went away before its request was read", request.method, request.url.path, client)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception):  # a bug in trainlab, still answered as JSON
        log.exception("error answering %s", request.url.path)
        return error_response(500, f"internal error ({type(error).__name__}: {error})")

    @app.get("/health", responses=error_responses(413, 500))
    async def health() -> dict[str, Any]:
        """``{"status": "ok"}``, and how the inputs served so far were batched: by all workers together, and by
        each (``workers``, by process id; ``worker``: the one that answers)."""
        return {"status": "ok"} | table.totals()

    @app.get("/metadata", responses=error_responses(413, 500))
    async def metadata() -> dict[str, Any]:
        return predictor.metadata() | {
            "max_inputs": max_inputs,
            "max_body_mb": cfg.max_body_mb,
            "max_pixels": max_pixels,
        }

    @app.post(
        "/predict",
        responses={200: {"content": {"application/json": {"schema": predictions_schema(predictor)}}}}
        | error_responses(400, 413, 415, 422, 500),
        openapi_extra={"requestBody": request_body(kind, max_inputs)},
    )
    async def predict(request: Request) -> JSONResponse:
        """JSON (the model's kind of input, e.g. images as base64 or rows, or raw inputs) or files (multipart,
        any field name, where the model takes them: images); one answer per input, in order:
        ``{"predictions": [{"label", "class_index", "probabilities"}]}``, or ``[{"value"}]`` for regression."""
        batcher: Batcher = request.app.state.batcher
        with batcher.reading_request():
            body = await receive(request, max_inputs)
            raw = read_small_upload(predictor, body, max_pixels)
            if raw is None:
                parse = functools.partial(read_inputs, predictor, body_model, body, max_inputs, max_pixels)
                raw = await asyncio.get_running_loop().run_in_executor(decoder, parse)
        return respond(await batcher(raw))

    return app


async def receive(request: Request, max_inputs: int) -> list[tuple[str, bytes]] | bytes:
    """The body of a ``POST /predict`` request, unparsed: the files of a form (name, content), or JSON text.
    The event loop only reads it; ``read_inputs`` parses it in a thread."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            # text fields are ignored (starlette's limit: 1000); the files are the inputs, under any field name
            async with request.form(max_files=max_inputs) as form:  # closes the files
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
            raise BadRequest(400, "the form holds no file; send files as -F file=@photo.png")
        return files
    if not content_type.startswith("application/json"):
        raise BadRequest(
            415, f"content-type {content_type or 'none'}: send multipart/form-data files or application/json"
        )
    return await request.body()


def read_small_upload(
    predictor: Predictor, body: list[tuple[str, bytes]] | bytes, max_pixels: int
) -> Inputs | None:
    """The checked raw inputs of a small upload (``INLINE_BYTES``) whose images' headers say they decode to
    few pixels (``INLINE_PIXELS``), read here in the event loop; None for any other body, which a thread
    reads (``read_inputs``)."""
    if isinstance(body, bytes) or sum(len(data) for _, data in body) > INLINE_BYTES:
        return None
    limit = min(max_pixels, INLINE_PIXELS)
    try:
        return predictor.check(predictor.kind.from_files(body, limit))
    except TooLarge:
        if limit == max_pixels:
            raise
        return None  # more pixels than decode in a moment: a thread reads it, within max_pixels


def read_inputs(
    predictor: Predictor,
    body_model: type[BaseModel],
    body: list[tuple[str, bytes]] | bytes,
    max_inputs: int,
    max_pixels: int,
) -> Inputs:
    """The checked raw inputs of a request's body (``receive``): JSON validated by ``body_model``
    (``request_model``), then one of its fields read by the model's kind of input; or the form's files."""
    kind = predictor.kind
    if not isinstance(body, bytes):
        return predictor.check(kind.from_files(body, max_pixels))
    try:
        request = body_model.model_validate_json(body)
    except ValidationError as error:
        message = describe(error.errors())
        if all(e["loc"][:1] == ("inputs",) for e in error.errors()):
            message = f"inputs are not arrays of numbers of one shape ({message})"
        raise BadRequest(422, message) from None
    given = sorted(request.model_fields_set)
    if len(given) != 1:
        raise BadRequest(422, f"give one of {kind.request_field} or inputs, not {given or 'none'}")
    values = getattr(request, given[0])
    if not values:
        raise BadRequest(422, f"{given[0]} is empty; give at least one input")
    if len(values) > max_inputs:
        raise BadRequest(
            413, f"{len(values)} inputs are more than the limit of {max_inputs} per request (max_inputs)"
        )
    if given == ["inputs"]:
        try:
            raw = kind.from_arrays(values)
        except DataError as error:  # not arrays of one shape: what the schema cannot say
            raise BadRequest(422, str(error)) from None
        return predictor.check(raw)  # arrays of another shape than the model's: a 400 naming it
    return predictor.check(kind.from_request(values, max_pixels))


def respond(answers: list[dict[str, Any]]) -> JSONResponse:
    """The answers as JSON, which has no number for NaN or infinity: an answer that is one (the model's
    output overflowed, for inputs far outside the training data) is a 400 naming the inputs."""
    try:  # a JSONResponse: the answers are plain data already, FastAPI need not validate them again
        return JSONResponse({"predictions": answers})
    except ValueError:
        bad = [i for i, answer in enumerate(answers) if not finite(answer)]
        raise BadRequest(
            400,
            f"the model's answers to inputs {bad} are not finite numbers: their values are far outside the "
            "training data's",
        ) from None


def finite(answer: dict[str, Any]) -> bool:
    try:
        json.dumps(answer, allow_nan=False)
    except ValueError:
        return False
    return True


# -- what this model's server takes and answers: pydantic's reading of a JSON body, the OpenAPI schema -------
def request_model(kind: InputKind) -> type[BaseModel]:
    """pydantic's reading of a JSON body: one of two fields, each a list (one input or many): the kind's own
    (``"images"``, ``"rows"``...) or ``"inputs"``, raw inputs as nested lists of numbers of the model's
    input's rank (their sizes, and the number of inputs, checked after, by errors that name them)."""
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        **{kind.request_field: (list[kind.request_type], None), "inputs": (list[kind.arrays_type()], None)},
    )


def request_body(kind: InputKind, max_inputs: int) -> dict[str, Any]:
    """The OpenAPI request body of ``POST /predict`` for this model: JSON with exactly one field (oneOf two
    objects, each requiring its own field and no other: the kind's, ``InputKind.request_schema``, and raw
    ``inputs``), and a form of files where the kind takes files."""
    fields = {
        kind.request_field: kind.request_schema(),
        "inputs": {
            "description": f"raw inputs as the ONNX model takes them ({kind.description}, as numbers)",
            "items": kind.arrays_schema(),
        },
    }
    variants = [
        {
            "type": "object",
            "title": name,
            "properties": {name: {"type": "array", "minItems": 1, "maxItems": max_inputs} | field},
            "required": [name],
            "additionalProperties": False,
        }
        for name, field in fields.items()
    ]
    content: dict[str, Any] = {"application/json": {"schema": {"oneOf": variants}}}
    if kind.file_uploads:
        files = {
            "type": "array",
            "minItems": 1,
            "maxItems": max_inputs,
            "items": {"type": "string", "format": "binary"},
        }
        description = f"{kind.description} as files; files under other field names count too"
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {"file": files | {"description": description}},
                "additionalProperties": True,  # text fields: ignored
            }
        }
    return {"required": True, "content": content}


def predictions_schema(predictor: Predictor) -> dict[str, Any]:
    """The answer: one prediction per input (``Predictor.answers``)."""
    if predictor.task.is_classification:
        names = predictor.spec.class_names
        prediction = {
            "properties": {
                "label": {"type": "string", "enum": names},
                "class_index": {"type": "integer", "minimum": 0, "maximum": len(names) - 1},
                "probabilities": {
                    "type": "object",
                    "properties": {name: {"type": "number"} for name in names},
                    "required": names,
                    "additionalProperties": False,
                },
            },
            "required": ["label", "class_index", "probabilities"],
        }
    else:
        prediction = {"properties": {"value": {"type": "number"}}, "required": ["value"]}
    predictions = {"type": "array", "items": {"type": "object", "additionalProperties": False} | prediction}
    return {"type": "object", "properties": {"predictions": predictions}, "required": ["predictions"]}


def describe(errors: list[dict[str, Any]]) -> str:
    """pydantic's validation errors as one line: ``rows.0: Input should be a valid dictionary; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5])


def serve(cfg: DictConfig) -> None:
    """Load ``cfg.ckpt`` (a .ckpt or an .onnx), then serve it in ``cfg.workers`` processes until SIGTERM or
    Ctrl-C. One worker serves in this process; several are started by uvicorn's supervisor (this process),
    each loading the model itself (``app_from_env``) with its share of the cores as threads."""
    import uvicorn

    for key in ("max_batch_size", "max_inputs", "max_pixels"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be at least 1, got {cfg[key]}")
    cfg = OmegaConf.merge(cfg, worker_settings(cfg.workers, cfg.num_threads))
    cfg.ckpt = to_absolute_path(cfg.ckpt)
    predictor = Predictor.load(Path(cfg.ckpt), cfg.device, cfg.num_threads)  # a bad file: one line, no workers
    log.info(
        "serving %s (%s, %s on %s inputs; test metrics %s) with workers=%d, num_threads=%s",
        predictor.source,
        predictor.backend,
        predictor.spec.task,
        predictor.spec.kind,
        json.dumps(predictor.test_metrics),
        cfg.workers,
        cfg.num_threads,
    )
    table = WorkerTable.create()
    options = {
        "host": cfg.host,
        "port": cfg.port,
        "access_log": cfg.access_log,
        "timeout_graceful_shutdown": cfg.graceful_shutdown_s,
        "log_level": "info",
    }
    try:
        if cfg.workers == 1:
            uvicorn.run(create_app(predictor, cfg, table), **options)
            return
        del predictor  # each worker loads its own
        os.environ[SETTINGS_VARIABLE] = json.dumps(
            {
                "cfg": OmegaConf.to_container(cfg, resolve=True),
                "table": str(table.folder),
                "logging": job_logging(),
            }
        )
        # uvicorn.run(..., workers=n), with a listening socket per worker (ReusePortWorkers), all listening
        # before uvicorn's line says where: a client that comes before the workers are up waits for them. A
        # worker that does not answer the supervisor's pings for timeout_worker_healthcheck is restarted:
        # importing torch on a busy machine can hold Python's lock for seconds (uvicorn's default: 5).
        config = uvicorn.Config(
            "trainlab.serve:app_from_env",
            factory=True,
            workers=cfg.workers,
            timeout_worker_healthcheck=60,
            **options,
        )
        sockets = listening_sockets(cfg.host, cfg.port, cfg.workers, config.backlog)
        try:
            address = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
            logging.getLogger("uvicorn.error").info(
                "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", address, sockets[0].getsockname()[1]
            )
            ReusePortWorkers(config, sockets).run()
        finally:
            for listening in sockets:
                listening.close()
    finally:
        table.remove()


def listening_sockets(host: str, port: int, workers: int, backlog: int) -> list[socket.socket]:
    """A listening socket for each worker on one port (port 0: the first picks a free one), joined by
    SO_REUSEPORT where there is one, so that the kernel spreads new connections over the workers evenly (by
    a hash of their addresses). A single socket shared by all would not: whichever worker's event loop is
    awake accepts every connection waiting, and a client's keep-alive connection stays with it (16 clients
    connecting at once went 16/0 or 13/3 to 2 workers). Without SO_REUSEPORT (not Linux or BSD): one socket
    for all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reuse_port = getattr(socket, "SO_REUSEPORT", None)
    sockets = []
    for _ in range(workers if reuse_port is not None else 1):
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port is not None:
            listening.setsockopt(socket.SOL_SOCKET, reuse_port, 1)
        listening.bind((host, port))
        listening.listen(backlog)
        port = listening.getsockname()[1]
        sockets.append(listening)
    return sockets


class ReusePortWorkers(Multiprocess):
    """uvicorn's multi-process supervisor (SIGTERM and Ctrl-C stop every worker gracefully, a worker that dies
    or hangs is replaced), starting each worker with a listening socket of its own (``listening_sockets``);
    a replaced worker serves them all, as uvicorn's own would."""

    def init_processes(self) -> None:
        for index in range(self.processes_num):
            process = Process(self.config, [self.sockets[index % len(self.sockets)]])
            process.start()
            self.processes.append(process)


def worker_settings(workers: int | str, num_threads: int | None) -> dict[str, int | None]:
    """``workers`` (``auto``: one per core this process may run on) and each one's ``num_threads`` (null: its
    share of those cores, when there are several workers; torch's and ONNX Runtime's default for one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers == "auto":
        workers = cores
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be auto or an integer >= 1, got {workers!r}")
    if num_threads is None and workers > 1:
        num_threads = max(1, cores // workers)
    return {"workers": workers, "num_threads": num_threads}


def job_logging() -> dict | None:
    """Hydra's logging configuration of this job (conf/serve.yaml: messages to stdout), for the workers."""
    from hydra.core.hydra_config import HydraConfig

    return OmegaConf.to_container(HydraConfig.get().job_logging) if HydraConfig.initialized() else None


def app_from_env() -> FastAPI:
    """The app of one worker process of a server with several (uvicorn's factory, called in each worker):
    the settings ``serve`` put into the environment, its logging as the server's, the model loaded here."""
    settings = json.loads(os.environ[SETTINGS_VARIABLE])
    if settings["logging"]:
        logging.config.dictConfig(settings["logging"])
    cfg = OmegaConf.create(settings["cfg"])
    predictor = Predictor.load(Path(cfg.ckpt), cfg.device, cfg.num_threads)
    return create_app(predictor, cfg, WorkerTable(settings["table"]))
