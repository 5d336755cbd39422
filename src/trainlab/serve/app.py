"""The FastAPI application of one server process: its routes, its error answers (each status documented),
and the OpenAPI schema of what this model takes and answers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from omegaconf import DictConfig
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from trainlab.dataloader import InputKind
from trainlab.errors import DataError, TooLarge
from trainlab.inference import Predictor
from trainlab.serve.batching import Batcher, WorkerTable
from trainlab.serve.reading import (
    DECODE_THREADS,
    BadRequest,
    BodyLimit,
    describe,
    error_response,
    read_inputs,
    read_small_upload,
    receive,
)

log = logging.getLogger(__name__)


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
