"""Reading a ``POST /predict`` request: its body (the event loop only receives it, under ``max_body_mb``:
``BodyLimit``, ``receive``), then its inputs, parsed and decoded in a thread (``read_inputs``) or, for a small
upload of few pixels, where it is (``read_small_upload``). Each problem is a ``BadRequest`` with its 4xx
status."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from trainlab.dataloader.base import Inputs
from trainlab.errors import DataError, TooLarge
from trainlab.inference import Predictor

# Threads that parse request bodies and decode images: two, so that a request at the max_pixels limit (about
# a second) does not hold up small ones, while at most two such decodes (up to 5 bytes a pixel each) run at once.
DECODE_THREADS = 2
# A multipart upload of at most INLINE_BYTES whose images' headers say they decode to at most INLINE_PIXELS in
# all (128x128) is read in the event loop: its decode takes well under a millisecond (a 28x28 PNG: 0.04 ms),
# less than the hand-over to a decoding thread and back (about 0.08 ms, more on a busy machine).
INLINE_BYTES, INLINE_PIXELS = 16_384, 16_384


class BadRequest(Exception):
    """A request the server cannot answer, with its HTTP status (4xx) and the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


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


def describe(errors: list[dict[str, Any]]) -> str:
    """pydantic's validation errors as one line: ``rows.0: Input should be a valid dictionary; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5])
