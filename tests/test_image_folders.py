"""Image folders: decoded once into a cache and held in memory when they fit the budget, streamed when they
do not; the same splits and batches either way; normalisation that fits the channel count; exact resume."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest
import torch
from conftest import make_config, make_data, write_images
from test_resume import assert_same_tensors, final_state, metrics, signal_at

from trainlab import checkpoint
from trainlab.dataloader import DataError, TensorData
from trainlab.model import IMAGENET_MEAN, IMAGENET_STD
from trainlab.preemption import Interrupted
from trainlab.run import train

FOLDER = ("dataset=image_folder", "dataset.image_size=16", "dataset.batch_size=8", "dataset.num_workers=1")
CACHE = "trainlab-cache-3x16x16-white.pt"


def folder_data(root, *overrides: str):
    return make_data(*FOLDER, f"dataset.root={root}", *overrides)


@pytest.fixture
def photos(tmp_path):
    write_images(tmp_path / "photos" / "train", per_class=20, seed=1)
    write_images(tmp_path / "photos" / "test", per_class=5, seed=2)
    return tmp_path / "photos"


def test_folder_within_the_budget_is_decoded_once_then_read_from_the_cache(photos, caplog):
    caplog.set_level(logging.INFO, logger="trainlab.dataloader")
    first = folder_data(photos)
    assert first.in_memory and (photos / CACHE).is_file()
    assert "decoded once (cached) and held in memory" in caplog.text and "cached it in" in caplog.text
    assert isinstance(first, TensorData) and first.x_train.device.type == "cpu"

    # Zero an image's bytes, keeping its size and time stamp: a run that decoded it again would fail.
    image = photos / "train" / "vertical" / "0.png"
    stamp = image.stat()
    image.write_bytes(bytes(stamp.st_size))
    os.utime(image, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    caplog.clear()
    second = folder_data(photos)
    assert "from the cache" in caplog.text
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(first, f"x_{split}"), getattr(second, f"x_{split}"))
        assert torch.equal(getattr(first, f"y_{split}"), getattr(second, f"y_{split}"))


def test_changed_files_are_decoded_again(photos, caplog):
    first = folder_data(photos)
    write_images(photos / "train", per_class=20, seed=7)  # the same names, new pixels and times
    caplog.set_level(logging.INFO, logger="trainlab.dataloader")
    second = folder_data(photos)
    assert "cached it in" in caplog.text and "from the cache" not in caplog.text
    assert not torch.equal(first.x_train, second.x_train)


def test_other_image_sizes_have_their_own_cache(photos):
    folder_data(photos)
    small = folder_data(photos, "dataset.image_size=8")
    assert small.input_shape == (3, 8, 8) and {p.name for p in photos.glob("trainlab-cache*")} == {
        CACHE,
        "trainlab-cache-3x8x8-white.pt",
    }


def test_streamed_and_in_memory_folders_give_the_same_batches(photos, caplog):
    """The same splits, order and pixels: with the normalisation given, bitwise; fitted, to float rounding."""
    given = ("dataset.mean=[0.5,0.4,0.3]", "dataset.std=[0.2,0.25,0.3]")
    caplog.set_level(logging.INFO, logger="trainlab.dataloader")
    streamed = folder_data(photos, "dataset.memory_budget=0", *given)
    assert not streamed.in_memory and "streamed through a DataLoader" in caplog.text
    in_memory = folder_data(photos, *given)
    assert in_memory.in_memory
    for split in ("train", "val", "test"):
        assert streamed.num_samples(split) == in_memory.num_samples(split)
    for a, b in zip(streamed.train_batches(epoch=2), in_memory.train_batches(epoch=2), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for a, b in zip(streamed.batches("test"), in_memory.batches("test", 8), strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    fitted_streamed, fitted = folder_data(photos, "dataset.memory_budget=0"), folder_data(photos)
    assert torch.allclose(fitted_streamed.mean, fitted.mean, rtol=1e-5)
    assert torch.allclose(fitted_streamed.std, fitted.std, rtol=1e-4)


def test_statistics_of_a_streamed_folder_are_computed_once(photos, caplog):
    caplog.set_level(logging.INFO, logger="trainlab.dataloader")
    first = folder_data(photos, "dataset.memory_budget=0")
    assert len(list(photos.glob("trainlab-cache-statistics-3x16x16-white-*.pt"))) == 1
    caplog.clear()
    second = folder_data(photos, "dataset.memory_budget=0")
    assert "from the cache" in caplog.text
    assert torch.equal(first.mean, second.mean) and torch.equal(first.std, second.std)
    other_seed = folder_data(photos, "dataset.memory_budget=0", "seed=3")  # another split: its own statistics
    assert len(list(photos.glob("trainlab-cache-statistics-3x16x16-white-*.pt"))) == 2
    assert not torch.equal(first.mean, other_seed.mean)


@pytest.mark.parametrize("memory_budget", [0.25, 0], ids=["in-memory", "streamed"])
def test_one_channel_images_are_normalised_with_their_own_statistics(photos, memory_budget):
    data = folder_data(photos, "dataset.channels=1", f"dataset.memory_budget={memory_budget}")
    spec = data.input_spec()
    assert spec.inputs["input_shape"] == [1, 16, 16] and len(spec.inputs["mean"]) == len(spec.inputs["std"]) == 1
    pixels = torch.cat([data.untransform(x) for x, _ in data.train_batches(epoch=0)])
    assert spec.inputs["mean"][0] == pytest.approx(pixels.mean().item(), rel=1e-4)
    assert spec.inputs["std"][0] == pytest.approx(pixels.std().item(), rel=1e-3)


def test_a_pretrained_torchvision_model_gets_imagenet_statistics(photos):
    pretrained = ("model=torchvision", "model.weights=resnet18.pth")  # the data set is built without the file
    data = folder_data(photos, *pretrained)
    assert data.input_spec().inputs["mean"] == pytest.approx(IMAGENET_MEAN) and data.input_spec().inputs[
        "std"
    ] == pytest.approx(IMAGENET_STD)
    assert folder_data(photos, "model=torchvision").input_spec().inputs["mean"] != pytest.approx(IMAGENET_MEAN)
    gray = folder_data(photos, *pretrained, "dataset.channels=1")  # ImageNet's are for 3 channels: fitted
    assert len(gray.input_spec().inputs["mean"]) == 1
    explicit = folder_data(photos, *pretrained, "dataset.mean=[0.5,0.5,0.5]")  # explicit values win
    assert explicit.input_spec().inputs["mean"] == [0.5, 0.5, 0.5] and explicit.input_spec().inputs[
        "std"
    ] == pytest.approx(IMAGENET_STD)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("dataset.channels=1", "dataset.mean=[0.5,0.5,0.5]"), "dataset.mean has 3 values for 1-channel images"),
        (("dataset.memory_budget=2",), "dataset.memory_budget is a share of the available memory, in [0, 1]"),
    ],
)
def test_bad_image_settings_are_one_line_errors(photos, overrides, message):
    with pytest.raises(Exception) as error:  # Hydra wraps errors raised as it instantiates
        folder_data(photos, *overrides)
    cause = error.value.__cause__ or error.value  # what train.py shows as its one error line
    assert isinstance(cause, DataError) and message in str(cause) and "\n" not in str(cause)


RUN = (*FOLDER, "model=cnn", "model.channels=[8]", "model.hidden_size=16", "model.dropout=0.2", "augment=standard")
RUN_FLAGS = ("trainer.num_threads=1", "trainer.max_epochs=3")


def test_in_memory_folder_resumed_mid_epoch_ends_bitwise_identical(photos, tmp_path, monkeypatch, caplog):
    run = (*RUN, f"dataset.root={photos}", *RUN_FLAGS)
    train(make_config(*run), tmp_path / "straight")
    assert (photos / CACHE).is_file()
    monkeypatch.setattr(TensorData, "train_batches", signal_at(epoch=1, batch=3, signum=signal.SIGTERM))
    caplog.set_level(logging.INFO, logger="trainlab.dataloader")
    with pytest.raises(Interrupted) as interrupted:
        train(make_config(*run), tmp_path / "interrupted")
    monkeypatch.undo()
    assert "from the cache" in caplog.text
    assert checkpoint.load(interrupted.value.ckpt_path)["batch_in_epoch"] == 4  # mid-epoch (of 6 batches)
    train(make_config(*run, f"ckpt_path={interrupted.value.ckpt_path}"), tmp_path / "resumed")
    assert_same_tensors(final_state(tmp_path / "straight"), final_state(tmp_path / "resumed"))
    assert metrics(tmp_path / "resumed") == metrics(tmp_path / "straight")


@pytest.mark.parametrize("to_float", [True, False])
def test_images_are_read_as_torchvisions_transforms_read_them(to_float):
    """``image_transform`` (plain PIL and numpy, for a server's speed) gives torchvision's resize, grey
    conversion and ``to_dtype(scale=True)`` bit for bit: training, predict.py and serve.py see the same pixels."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from trainlab.dataloader.kinds.image import image_transform

    rng = np.random.default_rng(0)
    for shape, size in [
        ((1, 28, 28), (28, 28)),
        ((1, 16, 16), (40, 33)),
        ((3, 32, 32), (28, 28)),
        ((3, 24, 24), (50, 70)),
    ]:
        image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        resized = F.resize(image, list(shape[1:]))  # as the PIL images they were
        expected = F.pil_to_tensor(F.rgb_to_grayscale(resized) if shape[0] == 1 else resized)
        expected = F.to_dtype(expected, torch.float32, scale=True) if to_float else expected
        assert torch.equal(image_transform(shape, to_float)(image), expected)


def test_grey_files_read_straight_give_the_pixels_of_the_rgb_round_trip(tmp_path):
    """A grey or 1-bit file for a 1-channel model skips the conversion to RGB and back (``read_image``): the
    same pixels, resized or not."""
    from PIL import Image

    from trainlab.dataloader.kinds.image import image_transform, read_image

    rng = np.random.default_rng(0)
    for size, shape in [((28, 28), (1, 28, 28)), ((40, 33), (1, 16, 16)), ((5, 90), (1, 32, 20))]:
        for mode in ("L", "1"):
            path = tmp_path / f"{size}{mode}.png"
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).convert(mode).save(path)
            with Image.open(path) as image:
                expected = image_transform(shape)(image.convert("RGB"))
            assert torch.equal(read_image(path, shape), expected)
