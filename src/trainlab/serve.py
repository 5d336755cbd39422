"""A REST server for a trained model: FastAPI on uvicorn, a ``.ckpt`` in torch or an ``.onnx`` in ONNX
Runtime (``trainlab.inference.Predictor``), the same API and answers.

    GET  /health     {"status": "ok"}, and the batching so far (``Batcher.stats``)
    GET  /metadata   task, classes, input spec, the training run's test metrics, backend
    POST /predict    image files (multipart), or JSON {"images": [base64...]}, {"rows": [{column: value}]},
                     {"inputs": [raw input arrays]}; answers {"predictions": [{label, class_index,
                     probabilities} or {value}, ...]}, one per input, in order
    GET  /docs       the API (OpenAPI: /openapi.json; also /redoc), its pages' scripts served from here

Concurrent requests are batched (``Batcher``): one worker thread runs the model, and while it does the
event loop keeps reading requests, which form the next batch (up to ``max_batch_size`` inputs, waiting up
to ``max_wait_ms`` for requests that are still being read); a lone request to a fast model runs in the event
loop (``Batcher.inline``). ``GET /health`` says how the inputs were batched. The event loop only moves
bytes: a request's body is parsed and its images decoded in a thread (``DECODE_THREADS``), so that a heavy
request never holds up the others nor ``/health``; images are refused from their headers beyond
``max_pixels`` (``inputs.read_image_files``). Every bad request is a 4xx JSON ``{"error": ...}`` that names
the problem, each status documented in the OpenAPI schema, which says exactly what this model takes;
uvicorn stops gracefully on SIGTERM.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import functools
import io
import itertools
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from trainlab.dataloader.inputs import TooManyPixels, encode_rows, read_image_files
from trainlab.errors import ConfigError, DataError
from trainlab.inference import Predictor

log = logging.getLogger(__name__)

INLINE_S = 0.001  # a lone request whose forward pass takes less runs in the event loop (Batcher.inline)
# Threads that parse request bodies and decode images: two, so that a request at the max_pixels limit (about
# a second) does not hold up small ones, while at most two such decodes (up to 5 bytes a pixel each) run at once.
DECODE_THREADS = 2


class BadRequest(Exception):
    """A request the server cannot answer, with its HTTP status (4xx) and the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ErrorBody(BaseModel):
    """Every answer but a prediction (any 4xx or 5xx status)."""

    error: str = Field(description="what is wrong, and how to fix it")


ERRORS = {
    400: "The body follows the schema, but its content cannot be used: a file that is no image or does not "
    "decode, base64 that is not, inputs of another shape than the model's, a row with an unknown column or a "
    "feature column that no row has, text where a column held numbers; or an answer that is not a finite "
    "number (inputs far outside the training data).",
    413: "Too large: a body over max_body_mb, more inputs than max_inputs, or images that would decode to more "
    "pixels than max_pixels (read from their headers).",
    415: "A content type other than multipart/form-data or application/json.",
    422: "A JSON body that the schema refuses: broken JSON, none or several of its fields, an empty list, a "
    "value of another type, an unknown field.",
    500: "A bug in trainlab, named in the message; the server keeps serving.",
}
Number = Annotated[float, Strict()]  # a JSON number (true and false are none)


class Batcher:
    """Answers inputs with the predictor, on batches gathered from concurrent requests, in one worker thread.

    A request's inputs join the pending ones, and a batch starts as soon as the worker is free, with every
    input pending (up to ``max_batch_size``); while requests are still being read it waits for them, up to
    ``max_wait_ms``. While a batch runs, the event loop reads the next requests, which form the next batch:
    the batches are as large as the load makes them, and the model runs beside the HTTP work, not in turn
    with it. A lone request to a fast model runs in the event loop (``inline``)."""

    def __init__(self, predictor: Predictor, max_batch_size: int, max_wait_ms: float):
        self.predictor, self.max_batch_size, self.max_wait = predictor, max_batch_size, max_wait_ms / 1000
        self.pending: collections.deque[tuple[torch.Tensor, asyncio.Future[list]]] = collections.deque()
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

    async def __call__(self, raw: torch.Tensor) -> list[dict[str, Any]]:
        """The answers (``Predictor.answers``) to checked raw inputs."""
        self.requests, self.inputs = self.requests + 1, self.inputs + len(raw)
        if not self.busy and not self.pending and self.inline(raw):
            return self.timed(raw)
        future = asyncio.get_running_loop().create_future()
        self.pending.append((raw, future))
        self.start()
        return await future

    def inline(self, raw: torch.Tensor) -> bool:
        """Whether to run the model in the event loop: for a request that is alone (no other is being read
        or has arrived) when at the last forward pass's time per input its inputs take under ``INLINE_S``.
        The event loop has nothing else to do meanwhile, and handing over to a thread and back costs more
        than such a forward pass (on a busy machine each wake-up of a thread waits for a core). "Arrived"
        counts the requests whose handlers have not begun: a handler runs from its start to here without
        giving way when the body came in one piece, so those that came with it have a task and no more."""
        return (
            not self.reading
            and self.last_forward_s * len(raw) < INLINE_S
            and len(asyncio.all_tasks() - self.server_tasks) == 1  # this request's task alone
        )

    def start(self) -> None:
        """Start a batch of the pending inputs when the worker is free; while requests are being read and
        the batch is not full, first wait for them up to ``max_wait_ms``."""
        if self.busy or not self.pending:
            return
        if self.reading and sum(len(raw) for raw, _ in self.pending) < self.max_batch_size:
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
            size += len(batch[-1][0])
        raws, futures = zip(*batch, strict=True)
        self.busy = True
        done = asyncio.get_running_loop().run_in_executor(self.executor, self.timed, torch.cat(raws))
        done.add_done_callback(functools.partial(self.answer, raws, futures))

    def answer(
        self, raws: tuple[torch.Tensor, ...], futures: tuple[asyncio.Future, ...], done: asyncio.Future
    ) -> None:
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
                part = list(itertools.islice(answers, len(raw)))  # taken in order, whoever still waits
                if not future.done():
                    future.set_result(part)
        self.start()

    def timed(self, raw: torch.Tensor) -> list[dict[str, Any]]:
        """The answers to a batch (one forward pass, one softmax), and the forward pass's time per input."""
        begin = time.perf_counter()
        outputs = self.predictor.forward(raw)
        self.last_forward_s = (time.perf_counter() - begin) / len(raw)
        self.forward_passes, self.largest_batch = self.forward_passes + 1, max(self.largest_batch, len(raw))
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


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses: each the ``{"error": ...}`` body."""
    return {status: {"model": ErrorBody, "description": ERRORS[status]} for status in statuses}


def create_app(predictor: Predictor, cfg: DictConfig) -> FastAPI:
    """The FastAPI application serving ``predictor`` with the settings of ``conf/serve.yaml``."""
    spec, max_inputs, max_pixels = predictor.spec, cfg.max_inputs, int(cfg.max_pixels)
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode")
    body_model = request_model(spec)

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
    app.state.batcher = Batcher(predictor, cfg.max_batch_size, cfg.max_wait_ms)
    app.add_middleware(BodyLimit, max_bytes=int(cfg.max_body_mb * 1e6))

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, error: BadRequest):
        return error_response(error.status, str(error))

    @app.exception_handler(DataError)
    async def bad_data(request: Request, error: DataError):
        return error_response(400, str(error))

    @app.exception_handler(TooManyPixels)
    async def too_many_pixels(request: Request, error: TooManyPixels):
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
        """``{"status": "ok"}``, and how the inputs served so far were batched."""
        return {"status": "ok"} | app.state.batcher.stats()

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
        openapi_extra={"requestBody": request_body(spec, max_inputs)},
    )
    async def predict(request: Request) -> JSONResponse:
        """Image files (multipart, any field name) or JSON (images as base64, rows, or raw inputs); one
        answer per input, in order: ``{"predictions": [{"label", "class_index", "probabilities"}]}``, or
        ``[{"value"}]`` for regression."""
        batcher: Batcher = request.app.state.batcher
        with batcher.reading_request():
            body = await receive(request, max_inputs)
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
            raise BadRequest(400, "the form holds no file; send images as -F file=@photo.png")
        return files
    if not content_type.startswith("application/json"):
        raise BadRequest(
            415, f"content-type {content_type or 'none'}: send multipart/form-data files or application/json"
        )
    return await request.body()


def read_inputs(
    predictor: Predictor,
    body_model: type[BaseModel],
    body: list[tuple[str, bytes]] | bytes,
    max_inputs: int,
    max_pixels: int,
) -> torch.Tensor:
    """The checked raw inputs of a request's body (``receive``): JSON validated by ``body_model``
    (``request_model``), then one of its fields read; or the form's image files."""
    spec = predictor.spec
    if not isinstance(body, bytes):
        return predictor.check(images(spec, body, max_pixels))
    try:
        request = body_model.model_validate_json(body)
    except ValidationError as error:
        message = describe(error.errors())
        if all(e["loc"][:1] == ("inputs",) for e in error.errors()):
            message = f"inputs are not arrays of numbers of one shape ({message})"
        raise BadRequest(422, message) from None
    given = sorted(request.model_fields_set)
    if len(given) != 1:
        raise BadRequest(422, f"give one of images, rows or inputs, not {given or 'none'}")
    values = getattr(request, given[0])
    if not values:
        raise BadRequest(422, f"{given[0]} is empty; give at least one input")
    if len(values) > max_inputs:
        raise BadRequest(
            413, f"{len(values)} inputs are more than the limit of {max_inputs} per request (max_inputs)"
        )
    if given == ["images"]:
        return images(
            spec, [(f"images[{i}]", decode_base64(i, text)) for i, text in enumerate(values)], max_pixels
        )
    if given == ["rows"]:
        return predictor.check(rows(spec, values))
    try:
        return predictor.check(torch.tensor(values, dtype=torch.float32))
    except (ValueError, TypeError) as error:
        raise BadRequest(422, f"inputs are not arrays of numbers of one shape ({error})") from None


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


def images(spec, files: list[tuple[str, bytes]], max_pixels: int) -> torch.Tensor:
    if spec.kind != "image":
        raise BadRequest(400, 'this model takes table rows, not images: send JSON {"rows": [{column: value}]}')
    return read_image_files([(name, io.BytesIO(data)) for name, data in files], spec.input_shape, max_pixels)


def decode_base64(index: int, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(400, f"images[{index}] is not base64 text; encode the image file's bytes") from None


def rows(spec, given: list[dict[str, Any]]) -> torch.Tensor:
    if spec.kind != "table":
        raise BadRequest(400, "this model takes images, not table rows: send image files or base64 images")
    known = {column["name"] for column in spec.columns} | {spec.target}
    numbers = {column["name"] for column in spec.columns if column["type"] == "number"}
    for i, row in enumerate(given):
        nested = [name for name, value in row.items() if isinstance(value, dict | list)]
        if nested:
            raise BadRequest(400, f"rows[{i}][{nested[0]!r}] is not a number or text: a cell holds one value")
        unknown = sorted(set(row) - known)
        if unknown:
            raise BadRequest(
                400,
                f"rows[{i}] has unknown column(s) {', '.join(unknown)}; the model's columns are "
                f"{', '.join(c['name'] for c in spec.columns)}",
            )
        text = [name for name in numbers & row.keys() if not is_number(row[name])]
        if text:
            raise BadRequest(
                400,
                f"column {text[0]!r} held numbers in training, but row {i} has {row[text[0]]!r}; send a number, "
                "or null for a missing value",
            )
    with np.errstate(over="ignore"):  # a number beyond float32's range is infinite: its answer refused (respond)
        return encode_rows(spec, given, "the rows")


def is_number(value: Any) -> bool:
    """A JSON number or null (a missing value): what a column of numbers takes."""
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


# -- what this model's server takes and answers: pydantic's reading of a JSON body, the OpenAPI schema -------
def request_model(spec) -> type[BaseModel]:
    """pydantic's reading of a JSON body: the types of its fields, raw inputs as nested lists of numbers of
    the model's input's rank (their sizes, and the number of inputs, checked after, by errors that name them)."""
    arrays: Any = Number
    for _ in spec.input_shape:
        arrays = list[arrays]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        images=(list[str], None),
        rows=(list[dict[str, Any]], None),
        inputs=(list[arrays], None),
    )


def request_body(spec, max_inputs: int) -> dict[str, Any]:
    """The OpenAPI request body of ``POST /predict`` for this model: JSON with exactly one field (oneOf
    three objects, each requiring its own field and no other), and for an image model a form of files."""
    fields = {
        "inputs": {
            "description": "raw inputs as the ONNX model takes them: "
            + ("images (C, H, W) in [0, 1] at the trained size" if spec.kind == "image" else "encoded rows"),
            "items": nested_arrays(spec.input_shape),
        }
    }
    content: dict[str, Any] = {}
    if spec.kind == "image":
        fields = {
            "images": {"description": "base64-encoded image files", "items": {"type": "string", "format": "byte"}}
        } | fields
        files = {
            "type": "array",
            "minItems": 1,
            "maxItems": max_inputs,
            "items": {"type": "string", "format": "binary"},
        }
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": files
                    | {"description": "image files (PNG, JPEG...); files under other field names count too"}
                },
                "additionalProperties": True,  # text fields: ignored
            }
        }
    else:
        fields = {"rows": rows_schema(spec)} | fields
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
    return {"required": True, "content": content | {"application/json": {"schema": {"oneOf": variants}}}}


def nested_arrays(shape) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number"}
    for size in reversed(shape):
        schema = {"type": "array", "minItems": size, "maxItems": size, "items": schema}
    return schema


def rows_schema(spec) -> dict[str, Any]:
    """Rows of the model's columns: numbers (or null: missing) where a column held numbers, any value in a
    category column (one not among its categories: none of them); every column in some row."""
    value = {"type": ["string", "number", "boolean", "null"]}
    columns = {
        column["name"]: {"type": ["number", "null"]}
        if column["type"] == "number"
        else value | {"description": f"categories: {', '.join(map(str, column['categories']))}"}
        for column in spec.columns
    }
    if spec.target:
        columns[spec.target] = value | {"description": "the target: ignored"}
    return {
        "description": "table rows: {column: value}; null or a key that a row lacks: a missing value",
        "items": {"type": "object", "properties": columns, "additionalProperties": False},
        "allOf": [{"contains": {"required": [column["name"]]}} for column in spec.columns],
    }


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
    """Load ``cfg.ckpt`` (a .ckpt or an .onnx), then serve it until SIGTERM or Ctrl-C."""
    import uvicorn

    for key in ("max_batch_size", "max_inputs", "max_pixels"):
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
