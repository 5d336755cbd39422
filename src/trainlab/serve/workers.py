"""Serving in ``workers`` processes: ``serve`` loads the model (a bad file: one line, before any worker
starts), then serves in this process, or starts uvicorn's supervisor with a listening socket per worker
(``listening_sockets``, ``ReusePortWorkers``), each worker building its own app (``app_from_env``)."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import socket
from pathlib import Path

from fastapi import FastAPI
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from trainlab.devices import cores
from trainlab.errors import ConfigError
from trainlab.inference import Predictor
from trainlab.serve.app import create_app
from trainlab.serve.batching import WorkerTable

log = logging.getLogger(__name__)

SETTINGS_VARIABLE = "TRAINLAB_SERVE_SETTINGS"  # how serve() hands its settings to its worker processes


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
            "trainlab.serve.workers:app_from_env",
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
    available = cores()
    if workers == "auto":
        workers = available
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be auto or an integer >= 1, got {workers!r}")
    if num_threads is None and workers > 1:
        num_threads = max(1, available // workers)
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
