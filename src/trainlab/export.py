"""Export a trained model to ONNX, checked by ONNX Runtime before it is written.

The ONNX model is ``InferenceModel``: it takes what predict takes (raw images in [0, 1] at the trained size,
or the encoded feature vector of table rows with NaN for a missing number, filled inside the graph), has a
dynamic batch axis, and carries the input spec (JSON), the class names and the run's test metrics in its
``metadata_props``, so that ``serve.py model.onnx`` needs nothing else. torch's current exporter
(``torch.onnx.export(..., dynamo=True)``) translates an ``ExportedProgram``; a layer it cannot translate is
named from that program's module stack.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from torch import nn

from trainlab.dataloader import InputKind, InputSpec
from trainlab.dataloader.base import Inputs, as_tuple, call, chunk, count
from trainlab.errors import CheckpointError, ConfigError, DataError, first_line
from trainlab.inference import (
    CLASSES_KEY,
    INPUT_SPEC_KEY,
    METRICS_KEY,
    InferenceModel,
    OnnxPredictor,
    beside,
    load_model,
    load_test_data,
    output_path,
    run_test_metrics,
    score,
)
from trainlab.progress import format_metrics

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # the largest absolute difference from torch's outputs an export may have


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write ``cfg.ckpt``'s model as ONNX (``cfg.output``, default ``<ckpt name>.onnx`` in its run dir or the
    current folder), after ONNX Runtime gave torch's outputs on the test split (else on generated inputs).
    Returns what the check found: ``max_abs_diff``, ``inputs`` and, on the test split, ONNX Runtime's
    metrics under ``onnx/...``."""
    if cfg.format != "onnx":
        raise ConfigError(f"format={cfg.format} is not supported; use format=onnx")
    ckpt_path = Path(to_absolute_path(cfg.ckpt))
    run_cfg, spec, model = load_model(ckpt_path, "cpu")
    path = output_path(
        to_absolute_path(cfg.output) if cfg.output else None, beside(ckpt_path, f"{ckpt_path.stem}.onnx")
    )
    wrapped = InferenceModel(spec, model).eval()
    program = to_onnx(wrapped, spec.input_kind())
    test_metrics = run_test_metrics(ckpt_path)
    program.model.metadata_props.update(
        {
            INPUT_SPEC_KEY: json.dumps(spec.to_dict()),
            CLASSES_KEY: json.dumps(spec.class_names),
            METRICS_KEY: json.dumps(test_metrics),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    unchecked = path.with_name(f".{path.name}.unchecked")
    program.save(str(unchecked))
    try:
        result = check(
            wrapped, OnnxPredictor(unchecked, "cpu"), *check_inputs(run_cfg, spec, ckpt_path), cfg.batch_size
        )
        os.replace(unchecked, path)
    finally:
        unchecked.unlink(missing_ok=True)
    log.info("wrote %s", path)
    if test_metrics:
        log.info("the run's test metrics: %s", format_metrics(test_metrics))
    return result


def to_onnx(model: nn.Module, kind: InputKind) -> torch.onnx.ONNXProgram:
    """``model`` (taking ``kind``'s raw inputs) as an ONNX program whose inputs are named and have the axes of
    any size the kind says (``onnx_inputs``, ``onnx_dynamic_axes``: the batch, a text's length..., up to
    ``onnx_axis_max``); a model
    that cannot be exported is a one-line ``CheckpointError`` naming the layer."""
    axes, largest = kind.onnx_dynamic_axes(), kind.onnx_axis_max()
    names = {name for per_input in axes for name in per_input.values()}
    dims = {name: torch.export.Dim(name, max=largest.get(name)) for name in names}
    dynamic_shapes = tuple({axis: dims[name] for axis, name in per_input.items()} for per_input in axes)
    try:
        with warnings.catch_warnings():  # nn.LSTM and nn.GRU re-list their weights as they run: torch.export warns
            warnings.filterwarnings("ignore", "The tensor attributes .*_flat_weights", UserWarning)
            # InferenceModel.forward(*raw): its inputs are one variadic argument, so are their shapes
            exported = torch.export.export(model, as_tuple(kind.example(2)), dynamic_shapes=(dynamic_shapes,))
    except Exception as error:  # torch.export's many kinds: untraceable Python, data-dependent shapes...
        raise CheckpointError(
            f"torch.export cannot trace this model ({type(error).__name__}: {first_line(error)}); keep the .ckpt "
            "and use predict.py or serve.py with it"
        ) from error
    try:
        program = torch.onnx.export(
            exported,
            dynamo=True,
            input_names=list(kind.onnx_inputs),
            output_names=["output"],
            verbose=False,
            report=False,
        )
    except torch.onnx.OnnxExporterError as error:
        raise CheckpointError(untranslatable(exported, error)) from None
    for value, per_input in zip(program.model.graph.inputs, axes, strict=True):  # the axes' names, not s0, s1
        value.shape = type(value.shape)([per_input.get(i, size) for i, size in enumerate(value.shape)])
    output = program.model.graph.outputs[0]
    output.shape = type(output.shape)(["batch", *output.shape[1:]])
    return program


def untranslatable(exported: torch.export.ExportedProgram, error: Exception) -> str:
    """The layer and operator the ONNX exporter could not translate, from its error and the failing node's
    module stack (``nn_module_stack``: the path and class of each module the node was called in). The
    exporter names the node of the decomposed program, so both programs are searched."""
    text = str(error)
    node_name = re.search(r"Error when translating node %(\w+)", text)
    op = re.search(r"op='([\w.]+)'", text) or re.search(r"target=torch\.ops\.([\w.]+)", text)
    reason = re.search(r"DispatchError'>: ([^\n]+)", text)
    layer = "a layer"
    if node_name:
        for program in (exported, exported.run_decompositions()):
            stacks = [n.meta.get("nn_module_stack") for n in program.graph.nodes if n.name == node_name[1]]
            if stacks and stacks[0]:
                path, kind = list(stacks[0].values())[-1]
                layer = f"layer {path.removeprefix('model.') or 'model'} ({str(kind).rpartition('.')[2]})"
                break
    return (
        f"this model cannot be exported to ONNX: {layer} uses {op[1] if op else 'an operator'}, which the ONNX "
        f"exporter cannot translate ({reason[1] if reason else first_line(error)}); keep the .ckpt and use "
        "predict.py or serve.py with it"
    )


def check_inputs(cfg: DictConfig, spec: InputSpec, ckpt_path: Path) -> tuple[Inputs, torch.Tensor | None, str]:
    """Raw inputs to compare torch with ONNX Runtime on, their targets and what they are: the test split
    when its data is present, else inputs the spec's kind generates (``InputKind.example``)."""
    try:
        data = load_test_data(cfg, spec, ckpt_path)
    except DataError as error:
        log.info("checking on generated inputs: the test split is not at hand (%s)", first_line(error))
        return spec.input_kind().example(64), None, "64 generated inputs"
    batches = list(data.batches("test"))
    raw = spec.input_kind().collate([data.untransform(x) for x, _ in batches])
    return raw, torch.cat([y for _, y in batches]), f"the test split ({count(raw)} inputs)"


def check(
    model: nn.Module,
    onnx: OnnxPredictor,
    raw: Inputs,
    targets: torch.Tensor | None,
    what: str,
    batch_size: int,
) -> dict[str, Any]:
    """Compare ONNX Runtime's outputs with torch's on ``raw``; refuse a difference over ``TOLERANCE``."""
    starts = range(0, count(raw), batch_size)
    with torch.inference_mode():
        expected = torch.cat([call(model, chunk(raw, i, i + batch_size)) for i in starts])
    outputs = torch.cat([onnx(chunk(raw, i, i + batch_size)) for i in starts])
    difference = (outputs - expected).abs().max().item()
    log.info("ONNX Runtime on %s: max abs difference from torch %.3g (tolerance %g)", what, difference, TOLERANCE)
    if not difference <= TOLERANCE:
        raise CheckpointError(
            f"the ONNX model's outputs differ from torch's by up to {difference:.3g} (over {TOLERANCE}) on {what}; "
            "nothing was written"
        )
    result: dict[str, Any] = {"max_abs_diff": difference, "inputs": what}
    if targets is not None:
        metrics = score(onnx.task, outputs, targets, "onnx")
        log.info("ONNX Runtime's metrics on the test split: %s", format_metrics(metrics))
        result |= metrics
    return result
