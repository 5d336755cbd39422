"""Image folders: decoded once into a cache and held in memory when they fit the budget, streamed when they
do not; the same splits and batches either way; normalisation that fits the channel count; exact resume."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_config, make_data, write_images, write_photos
from PIL import Image
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
    from trainlab.dataloader.kinds.image import image_transform, read_image

    rng = np.random.default_rng(0)
    for size, shape in [((28, 28), (1, 28, 28)), ((40, 33), (1, 16, 16)), ((5, 90), (1, 32, 20))]:
        for mode in ("L", "1"):
            path = tmp_path / f"{size}{mode}.png"
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).convert(mode).save(path)
            with Image.open(path) as image:
                expected = image_transform(shape)(image.convert("RGB"))
            assert torch.equal(read_image(path, shape), expected)


# -- real folders: photos, and the files every real folder has ----------------------------------------
HOSTILE = {  # one file of each kind that cannot be decoded, and the reason its line gives
    "disc/truncated.jpg": "not a readable image (truncated",
    "disc/empty.png": "an empty file",
    "square/random.jpg": "no format pil reads",
    "square/huge.png": "too large to decode",
}


def add_hostile_files(root) -> None:
    whole = (root / "disc" / "0.jpg").read_bytes()
    (root / "disc" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "disc" / "empty.png").write_bytes(b"")
    (root / "square" / "random.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    Image.new("1", (10_000, 10_000)).save(root / "square" / "huge.png")  # 100 MP: over Pillow's 89 MP limit


@pytest.fixture(scope="module")
def photo_folders(tmp_path_factory):
    """The same photos twice: as they are, and with one file of each hostile kind added."""
    base = tmp_path_factory.mktemp("real")
    clean, hostile = write_photos(base / "clean", per_class=30), write_photos(base / "hostile", per_class=30)
    add_hostile_files(hostile)
    return clean, hostile


PHOTO_RUN = (
    "dataset=image_folder",
    "dataset.image_size=16",
    "dataset.num_workers=1",
    "dataset.batch_size=8",
    "model=cnn",
    "model.channels=[8,16]",
    "trainer.max_epochs=8",
    "trainer.num_threads=1",
)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # huge.png: PIL warns, then we skip it
@pytest.mark.parametrize("memory_budget", [0.25, 0], ids=["in-memory", "streamed"])
def test_undecodable_files_are_skipped_listed_and_cost_no_accuracy(photo_folders, tmp_path, caplog, memory_budget):
    clean, hostile = photo_folders
    runs = {}
    for name, root in (("clean", clean), ("hostile", hostile)):
        with caplog.at_level(logging.WARNING, logger="trainlab.dataloader"):
            runs[name] = train(
                make_config(*PHOTO_RUN, f"dataset.root={root}", f"dataset.memory_budget={memory_budget}"),
                tmp_path / name,
            )
    assert runs["clean"]["test/acc"] >= 0.8
    assert runs["hostile"]["test/acc"] == runs["clean"]["test/acc"]  # the same photos, split and training
    listed = dict(
        line.split("\t") for line in (tmp_path / "hostile" / "skipped_files.txt").read_text().splitlines()
    )
    assert sorted(listed) == sorted(HOSTILE) and not (tmp_path / "clean" / "skipped_files.txt").exists()
    for path, why in HOSTILE.items():
        assert why in listed[path].lower()
    (warning,) = [r.message for r in caplog.records if "skipped 4 files" in r.message]
    assert all(path in warning for path in HOSTILE) and "\n" not in warning


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_on_bad_file_error_names_every_file_in_one_line_and_the_cache_keeps_the_list(photo_folders, caplog):
    _, hostile = photo_folders
    caplog.set_level(logging.INFO, logger="trainlab.dataloader")
    skipped = folder_data(hostile).skipped
    assert sorted(path for path, _ in skipped) == sorted(HOSTILE)
    caplog.clear()
    with pytest.raises(Exception) as error:
        folder_data(hostile, "dataset.on_bad_file=error")
    assert "from the cache" in caplog.text  # the skips were recorded with the decoded images
    cause = error.value.__cause__ or error.value
    message = str(cause)
    assert isinstance(cause, DataError) and "\n" not in message
    assert message.startswith(f"4 files of {hostile} cannot be decoded (dataset.on_bad_file=error): ")
    assert all(path in message for path in HOSTILE) and "dataset.on_bad_file=skip" in message


def twins(folder):
    """Pairs of files that must give the same model input: a phone-rotated JPEG (pixels stored sideways,
    EXIF orientation 6) and its upright twin, a 16-bit grey PNG and its 8-bit twin, an RGBA PNG whose ink is
    in its alpha channel and the same ink drawn on white, a GIF and its PNG."""
    write_photos(folder / "made", per_class=1, size=48)
    upright = Image.open(folder / "made" / "square" / "0.jpg").convert("RGB").crop((0, 0, 48, 32))
    upright.save(folder / "upright.jpg", quality=100, subsampling=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the camera stored the pixels turned left
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "phone.jpg", quality=100, subsampling=0, exif=exif)
    grey = np.asarray(upright.convert("L"))
    Image.fromarray(grey).save(folder / "grey8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "grey16.png")
    ink = 255 - grey
    Image.fromarray(np.dstack([np.zeros((32, 48, 3), np.uint8), ink])).save(folder / "alpha_ink.png")
    upright.quantize(64).save(folder / "palette.gif")
    upright.quantize(64).convert("RGB").save(folder / "palette.png")
    return {
        "phone.jpg": "upright.jpg",
        "grey16.png": "grey8.png",
        "alpha_ink.png": "grey8.png",
        "palette.gif": "palette.png",
    }


def test_rotated_16_bit_transparent_and_gif_files_give_their_twins_input_in_training_and_predict(tmp_path):
    from trainlab.dataloader.kinds.image import read_class_folders, read_image

    pairs = twins(tmp_path / "files")
    assert Image.open(tmp_path / "files" / "grey16.png").mode.startswith("I")  # really 16 bits
    for shape in [(3, 24, 24), (1, 16, 32)]:
        training = {}
        for name in {*pairs, *pairs.values()}:  # the training loader: an image folder's one class of each file
            folder = tmp_path / "train" / name.replace(".", "_")
            (folder / "c").mkdir(parents=True, exist_ok=True)
            (folder / "c" / name).write_bytes((tmp_path / "files" / name).read_bytes())
            (loaded, _), *_ = read_class_folders(folder, shape)
            training[name] = loaded
            assert torch.equal(read_image(tmp_path / "files" / name, shape), loaded)  # predict's read: the same
        for name, twin in pairs.items():
            difference = (training[name] - training[twin]).abs()
            if name == "phone.jpg":  # two JPEGs of the same pixels: their compression differs a little
                assert difference.mean() < 0.01 and difference.max() < 0.1, name
                sideways = read_image(tmp_path / "files" / name, shape[:1] + shape[:0:-1]).transpose(1, 2)
                assert (sideways - training[twin]).abs().mean() > 0.05  # what ignoring the EXIF gives
            else:
                assert difference.max() <= 1 / 255 + 1e-6, name
    assert (training["alpha_ink.png"].mean() > 0.3) and (training["grey16.png"] < 1).float().mean() > 0.5


def test_gifs_train_as_predict_reads_them(tmp_path):
    root = write_images(tmp_path / "photos", per_class=6, size=8)
    Image.open(root / "vertical" / "0.png").save(root / "vertical" / "extra.gif")
    data = folder_data(root, "dataset.image_size=8")
    assert sum(data.num_samples(split) for split in ("train", "val", "test")) == 19  # 18 PNGs and the GIF


def test_predict_gives_the_same_one_line_error_on_class_folders_as_on_a_flat_folder(tmp_path):
    from trainlab.dataloader import InputSpec

    spec = InputSpec(
        "multiclass", 3, list(CLASSES), "image", {"input_shape": [3, 8, 8], "mean": [0] * 3, "std": [1] * 3}
    )
    root = write_images(tmp_path / "classes", per_class=2, size=8)
    whole = (root / "vertical" / "0.png").read_bytes()
    (root / "vertical" / "1.png").write_bytes(whole[: len(whole) // 2])
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "1.png").write_bytes(whole[: len(whole) // 2])
    messages = []
    for folder in (root, flat):
        with pytest.raises(DataError) as error:
            spec.input_kind().read(folder)
        messages.append(str(error.value).replace(str(folder / "vertical"), str(flat)))
    assert messages[0] == messages[1] and messages[0].startswith(f"{flat / '1.png'} is not a readable image (")
