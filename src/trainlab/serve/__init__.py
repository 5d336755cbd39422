"""A REST server for a trained model: FastAPI on uvicorn, a ``.ckpt`` in torch or an ``.onnx`` in ONNX
Runtime (``trainlab.inference.Predictor``), the same API and answers.

    GET  /health     {"status": "ok"}, and the batching so far, by every worker (``WorkerTable``)
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

Modules: ``workers`` (``serve``: the processes), ``app`` (the routes, errors and OpenAPI schema), ``reading``
(a request's body and inputs), ``batching`` (``Batcher``, ``WorkerTable``).
"""

from trainlab.serve.workers import serve

__all__ = ["serve"]
