"""Where config becomes objects. ``train.py``, ``predict.py``, the benchmark and the tests all build a run
through these functions, so there is one place that calls ``instantiate``."""

from __future__ import annotations

import inspect
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class, instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch import nn

from trainlab import settings
from trainlab.dataloader import BatchedData, InputSpec
from trainlab.dataloader.base import Normalization
from trainlab.errors import ConfigError
from trainlab.outputs import flat_hparams
from trainlab.resume import checkpoint_to_continue, resumed_config
from trainlab.trainer import Trainer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_data(cfg: DictConfig, augment: bool = True, **settings: Any) -> BatchedData:
    """The data set of ``cfg.dataset`` (with ``cfg.augment`` and the fold of ``cfg.cv``), set up: loaded,
    split, preprocessing fitted (images with ``mean``/``std`` null: as ``cfg.model``'s pretrained weights
    expect, else on the training split). ``augment=False`` leaves ``cfg.augment`` out and ``settings``
    override the data set's own (inference rebuilding a test split: no augmentation, ``download=False``)."""
    augmentation = instantiate(cfg.augment, _convert_="object") if augment and cfg.get("augment") else None
    cv = instantiate(cfg.cv) if cfg.get("cv") else None
    data = instantiate(cfg.dataset, augment=augmentation, cv=cv, **settings)
    return data.setup(expected_normalization(cfg.get("model")))


def expected_normalization(model_cfg: DictConfig | None) -> Normalization | None:
    """The per-channel (mean, std) the model's starting weights expect of its inputs, where its class says
    (a static ``input_normalization(settings)``: ``TorchvisionModel`` with ``model.weights``, ImageNet's)."""
    if model_cfg is None or "_target_" not in model_cfg:
        return None
    ask = getattr(get_class(model_cfg._target_), "input_normalization", None)
    return ask(model_cfg) if ask is not None else None


def build_model(cfg: DictConfig, spec: InputSpec, pretrained: bool = True) -> nn.Module:
    """The model of ``cfg.model`` sized for the inputs ``spec`` describes: with what their kind sizes a model
    by (``InputKind.model_sizes``: ``input_shape``; a vocabulary's ``vocab_size``...) and ``num_outputs``.
    ``pretrained=False`` skips the ``weights`` file a model starts from (model=torchvision), for a model whose
    trained weights are loaded next anyway."""
    sizes = spec.input_kind().model_sizes() | {"num_outputs": spec.task_object().num_outputs}
    check_model_fits(cfg.model, sizes, spec.kind)
    skip = {"weights": None} if not pretrained and "weights" in cfg.model else {}
    return instantiate(cfg.model, **sizes, **skip)


def check_model_fits(model_cfg: DictConfig, sizes: dict[str, Any], kind: str) -> None:
    """A one-line ``ConfigError`` where the model's class takes other sizes than ``kind`` inputs give (a CNN
    for texts, an RNN for images) or has no such setting as one of ``model_cfg``'s, rather than the
    constructor's TypeError in Hydra's message."""
    model_class = get_class(model_cfg._target_)
    parameters = inspect.signature(model_class).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [name for name in sizes if name not in parameters]
    needed = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name not in sizes and name not in model_cfg
    ]
    if unknown or needed:
        given = ", ".join(name for name in sizes if name != "num_outputs")
        raise ConfigError(
            f"model {model_class.__name__} is not made for {kind} inputs: it is sized by "
            f"{', '.join(needed) or 'other sizes'}, and they give {given}; choose a model for {kind} inputs"
        )
    settings_ = [key for key in model_cfg if not (key.startswith("_") and key.endswith("_"))]
    strange = [key for key in settings_ if key not in parameters]
    if strange:
        known = ", ".join(name for name in parameters if name not in sizes)
        raise ConfigError(
            f"model.{strange[0]} is not a setting of {model_class.__name__}; its settings are {known or 'none'}"
        )


def build_data_and_model(cfg: DictConfig) -> tuple[BatchedData, nn.Module]:
    """The data set, then the model sized by it (``build_model``)."""
    seed_everything(cfg.seed)
    data = build_data(cfg)
    return data, build_model(cfg, data.input_spec())


@dataclass
class Run:
    data: BatchedData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scheduler_interval: str
    trainer: Trainer

    def fit(self, cfg: DictConfig, run_dir: str | Path, ckpt_path: str | Path | None = None) -> dict[str, Any]:
        """Train in ``run_dir``; ``cfg`` (the config this run was built from) goes into its checkpoints and
        TensorBoard's HParams."""
        return self.trainer.fit(
            self.model,
            self.data,
            self.optimizer,
            self.scheduler,
            self.scheduler_interval,
            run_dir=run_dir,
            config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
            hparams=flat_hparams(cfg),
            ckpt_path=ckpt_path,
        )


def build(cfg: DictConfig) -> Run:
    """Everything a training run needs, from a composed config."""
    data, model = build_data_and_model(cfg)
    optimizer = build_optimizer(cfg, model)
    trainer = instantiate(
        cfg.trainer, callbacks=cfg.get("callbacks"), loggers=cfg.get("logger"), _convert_="object"
    )
    scheduler, interval = build_scheduler(cfg, optimizer, trainer, data)
    return Run(data, model, optimizer, scheduler, interval, trainer)


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``conf/optimizer/*.yaml`` completed with the model's parameters. torch accepts
    ``lr=0``, which trains nothing, so a non-positive learning rate is refused here, by its setting's name."""
    lr = cfg.optimizer.get("lr", 1.0)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or lr <= 0:
        raise ConfigError(f"optimizer.lr must be a positive number, got {lr}; e.g. optimizer.lr=1e-3")
    return instantiate(cfg.optimizer)(model.parameters())


def build_scheduler(cfg: DictConfig, optimizer, trainer: Trainer, data: BatchedData) -> tuple[Any, str]:
    """The learning-rate scheduler of ``conf/scheduler/*.yaml``, or None.

    Its YAML says ``interval: epoch`` or ``step``. Schedulers stepped per batch are given ``total_steps``,
    the number of optimizer steps in the run, which only the data and trainer settings determine.
    """
    spec = OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None
    if not spec:
        return None, "epoch"
    interval = spec.pop("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise ConfigError(f"scheduler.interval must be epoch or step, got {interval!r}")
    make = instantiate(spec)
    if interval == "step":
        return make(optimizer, total_steps=trainer.max_epochs * trainer.steps_per_epoch(data)), interval
    return make(optimizer), interval


def prepare_config(
    cfg: DictConfig, overrides: list[str] | None = None, run_dir: str | Path | None = None
) -> DictConfig:
    """The config a run is built from. The files and folders it names are made absolute, so that the config
    saved in checkpoints works from any folder (dataset=csv's path, dataset=image_folder's root,
    model=torchvision's weights). Given the ``run_dir``, ``ckpt_path=auto`` becomes that run's own
    ``last.ckpt``, or nothing for a run that starts (``trainlab.resume.checkpoint_to_continue``). With
    ``ckpt_path`` it is the checkpoint's own config, with the command line's ``overrides`` that a resumed run
    may change (``trainlab.resume``)."""
    for key in settings.PATHS:
        value = OmegaConf.select(cfg, key)
        if value:
            OmegaConf.update(cfg, key, to_absolute_path(value))
    if run_dir is not None:
        ckpt_path = checkpoint_to_continue(cfg, Path(run_dir))
        if ckpt_path != cfg.get("ckpt_path"):  # ckpt_path=auto
            cfg.run_id = cfg.run_id  # resolved before ckpt_path changes: its default follows ckpt_path=auto
            cfg.ckpt_path = ckpt_path
    return resumed_config(cfg, overrides) if cfg.get("ckpt_path") else cfg


def train(cfg: DictConfig, run_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Prepare ``cfg`` (``prepare_config``), then build the run, fit it in ``run_dir`` and return its final
    metrics."""
    return build_and_fit(prepare_config(cfg, overrides, run_dir), run_dir)


def build_and_fit(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Build the run from a prepared config, fit it in ``run_dir`` and return its final metrics."""
    run = build(cfg)
    params = sum(p.numel() for p in run.model.parameters())
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    log.info(
        "model %s (%s parameters, %s trainable) on %s, data %s: %d train / %d val / %d test, device %s",
        type(run.model).__name__,
        f"{params:,}",
        f"{trainable:,}",
        run.data.input_spec().input_kind().summary(),
        type(run.data).__name__,
        *(run.data.num_samples(split) for split in ("train", "val", "test")),
        run.trainer.device,
    )
    ckpt_path = to_absolute_path(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if ckpt_path and Path(ckpt_path).parents[1].resolve() != Path(run_dir).resolve():
        log.info("this run continues %s in %s (that run is not touched)", Path(ckpt_path).parents[1], run_dir)
    return run.fit(cfg, run_dir, ckpt_path=ckpt_path)
