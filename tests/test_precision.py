"""trainer.precision: auto picks bf16 autocast where the device multiplies bf16 fast and the model class trains
as well in it, fp32 elsewhere, and says so in the log; losses and metrics stay fp32. (Its speed and accuracy
are measured by the benchmarks, docs/benchmarks.md, not here.)"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_config
from torch import nn

from trainlab import devices
from trainlab.errors import ConfigError
from trainlab.model import CNN, MLP
from trainlab.run import build

# The flags lines of /proc/cpuinfo on three x86 servers, shortened to what matters here and some others.
SAPPHIRE_RAPIDS = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN4 = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 avx512_vp2intersect"
SKYLAKE = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512cd avx512dq avx512vl"
CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: a CPU\n{flags}\nbugs\t\t: spectre_v1\n\n"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(SAPPHIRE_RAPIDS, "bf16"), (ZEN4, "bf16"), (SKYLAKE, "32"), ("", "32")],
    ids=["amx", "avx512_bf16", "avx512-without-bf16", "no-cpuinfo-flags"],
)
def test_auto_is_bf16_on_a_cpu_with_amx_or_avx512_bf16_and_fp32_on_others(flags, expected):
    found = devices.cpu_flags(CPUINFO.format(flags=flags))
    precision, why = devices.choose_precision("auto", "cpu", MLP, found)
    assert precision == expected
    assert ("amx_bf16" in why or "avx512_bf16" in why) if expected == "bf16" else "without" in why


def test_auto_on_cuda_follows_the_devices_bf16_support_and_fp32_on_other_devices():
    assert devices.choose_precision("auto", "cuda", CNN, cuda_bf16=True)[0] == "bf16"
    assert devices.choose_precision("auto", "cuda", CNN, cuda_bf16=False)[0] == "32"
    assert devices.choose_precision("auto", "mps", CNN)[0] == "32"


class LosesAccuracyInBf16(nn.Linear):
    auto_bf16 = False  # what a model class whose benchmark showed a loss over 0.2 points declares


def test_auto_is_fp32_for_a_model_class_that_says_bf16_loses_accuracy():
    flags = devices.cpu_flags(CPUINFO.format(flags=SAPPHIRE_RAPIDS))
    precision, why = devices.choose_precision("auto", "cpu", LosesAccuracyInBf16, flags)
    assert precision == "32" and "LosesAccuracyInBf16.auto_bf16" in why
    assert devices.choose_precision("auto", "cuda", LosesAccuracyInBf16, cuda_bf16=True)[0] == "32"


@pytest.mark.parametrize("setting", ["32", "bf16", "16"])
def test_a_precision_given_is_kept_whatever_the_device(setting):
    assert devices.choose_precision(setting, "cpu", LosesAccuracyInBf16, ())[0] == setting


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"trainer\.precision must be auto, 32, bf16 or 16, got '8'"):
        devices.check_precision("8")


def test_auto_is_logged_and_trains_in_the_precision_it_names(tmp_path, caplog):
    """On this machine: the log names the choice, and the forward passes of training run in it."""
    expected, why = devices.choose_precision("auto", "cpu", MLP, devices.cpu_flags())
    cfg = make_config("trainer.max_epochs=1", "trainer.device=cpu", "trainer.limit_batches=2")
    run = build(cfg)
    seen = set()
    run.model.register_forward_hook(lambda module, inputs, outputs: seen.add(outputs.dtype))
    with caplog.at_level(logging.INFO, logger="trainlab.devices"):
        metrics = run.fit(cfg, tmp_path)
    assert f"precision {expected} (auto: {why})" in caplog.text
    # training and validation in the precision chosen; the test in fp32, as predict.py and serve run the model
    assert seen == ({torch.bfloat16, torch.float32} if expected == "bf16" else {torch.float32})
    assert isinstance(metrics["test/loss"], float) and metrics["test/loss"] > 0
