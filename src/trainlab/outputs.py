"""What a run writes besides its checkpoints: TensorBoard events (``tensorboard/``) and ``metrics.json``.
Only rank 0 writes; on the other ranks of a DDP run every call does nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainlab import distributed


class _NoWriter:
    """Stands in for TensorBoard's writer on ranks other than 0."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class RunOutputs:
    """The run dir's TensorBoard writer (``writer``, for callbacks' pictures too) and its results file.

    Args:
        run_dir: the run's folder.
        purge_step: a resumed run's global step: TensorBoard drops events logged after it by the first run.
    """

    def __init__(self, run_dir: Path, purge_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.writer = (
            SummaryWriter(self.run_dir / "tensorboard", purge_step=purge_step or None)
            if distributed.is_main()
            else _NoWriter()
        )

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def write_results(self, results: dict[str, Any], hparams: dict[str, Any]) -> None:
        """``metrics.json``, and the run's settings with its final metrics for TensorBoard's HParams tab."""
        if not distributed.is_main():
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metric_values = {k: v for k, v in results.items() if isinstance(v, float | int) and "/" in k}
        for summary in hparams_summary(hparams, metric_values):
            self.writer.file_writer.add_summary(summary)
        (self.run_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")

    def close(self) -> None:
        self.writer.close()


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's settings as flat ``group.key: value`` pairs, for TensorBoard's HParams dashboard."""
    flat = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key != "_partial_":
                    visit(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, bool | int | float | str):
            flat[prefix] = node
        elif node is not None:
            flat[prefix] = str(node)

    visit(OmegaConf.to_container(cfg, resolve=True), "")
    return flat
