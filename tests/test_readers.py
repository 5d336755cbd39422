"""MNIST, Fashion-MNIST and CIFAR-10 read by torchvision's own readers from files in their native formats,
the message when they are missing and cannot be downloaded, and (where present) the real MNIST files."""

import pytest
import torch
from conftest import SHARED_DATASETS, accept_cifar10_checksums, make_data, write_cifar10, write_mnist

from trainlab.dataloader import DataError

# An address where nothing listens: the download is really attempted and fails at once, online or not.
UNREACHABLE = "http://127.0.0.1:9/"


def samples(data, *splits: str) -> list[tuple[bytes, int]]:
    """The (image bytes, label) pairs of ``splits``, sorted: model inputs undone back to the raw bytes."""
    pairs = []
    for split in splits:
        x = getattr(data, f"x_{split}") * data.std + data.mean
        images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).squeeze(-1).numpy()
        pairs += [(i.tobytes(), y) for i, y in zip(images, getattr(data, f"y_{split}").tolist(), strict=True)]
    return sorted(pairs)


def written(arrays: dict, split: str) -> list[tuple[bytes, int]]:
    pairs = zip(arrays[f"{split}_images"], arrays[f"{split}_labels"].tolist(), strict=True)
    return sorted((i.tobytes(), y) for i, y in pairs)


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_style_idx_files(tmp_path, dataset, folder):
    arrays = write_mnist(tmp_path, folder, n_train=40, n_test=20)
    data = make_data(f"dataset={dataset}", f"paths.data_dir={tmp_path}")

    assert data.input_shape == (1, 28, 28) and data.num_outputs == 10
    assert len(data.y_train) + len(data.y_val) == 40 and len(data.y_val) == 4  # val_fraction 0.1
    assert samples(data, "test") == written(arrays, "test")  # the official test file, not a share of train
    assert samples(data, "train", "val") == written(arrays, "train")


def test_cifar10_pickle_batches(tmp_path, monkeypatch):
    arrays, md5s = write_cifar10(tmp_path, per_batch=8)
    accept_cifar10_checksums(monkeypatch, md5s)
    data = make_data("dataset=cifar10", f"paths.data_dir={tmp_path}")

    assert data.input_shape == (3, 32, 32) and data.num_outputs == 10
    assert data.classes[:2] == ["airplane", "automobile"]
    assert samples(data, "test") == written(arrays, "test")  # the official test file, not a share of train
    assert samples(data, "train", "val") == written(arrays, "train")


def test_cifar10_reader_still_checks_checksums(tmp_path):
    """Without the checksums of our files torchvision rejects them: the reader above really verified them."""
    write_cifar10(tmp_path, per_batch=2)
    with pytest.raises(DataError, match="CIFAR10 files not found"):
        make_data("dataset=cifar10", f"paths.data_dir={tmp_path}", "dataset.download=false")


@pytest.mark.parametrize(
    "dataset, reader, attribute", [("mnist", "MNIST", "mirrors"), ("cifar10", "CIFAR10", "url")]
)
def test_missing_files_offline_say_where_they_belong(tmp_path, monkeypatch, dataset, reader, attribute):
    import torchvision

    value = [UNREACHABLE] if attribute == "mirrors" else UNREACHABLE + "cifar-10-python.tar.gz"
    monkeypatch.setattr(getattr(torchvision.datasets, reader), attribute, value)
    empty = tmp_path / "no data here"
    with pytest.raises(DataError) as error:
        make_data(f"dataset={dataset}", f"paths.data_dir='{empty}'")  # dataset.download is true
    message = str(error.value)
    assert "\n" not in message and "could not be downloaded" in message
    assert str(empty) in message and "paths.data_dir" in message


@pytest.mark.parametrize(
    "dataset, folder, mean, std, first_labels",
    [
        ("mnist", "MNIST", 0.1307, 0.3081, [5, 0, 4, 1, 9]),
        ("fashion_mnist", "FashionMNIST", 0.2860, 0.3530, [9, 0, 0, 3]),
    ],
)
def test_real_files_give_the_published_facts(dataset, folder, mean, std, first_labels):
    """The statistics fitted on the whole training split (mean/std null, no validation share) are the
    published ones, and the reader keeps the files' order."""
    if not (SHARED_DATASETS / folder / "raw").is_dir():
        pytest.skip(f"no real {folder} files at {SHARED_DATASETS / folder / 'raw'}")
    data = make_data(
        f"dataset={dataset}",
        f"paths.data_dir={SHARED_DATASETS}",
        "dataset.download=false",
        "dataset.mean=null",
        "dataset.std=null",
        "dataset.val_fraction=0",
    )
    assert (len(data.y_train), len(data.y_test)) == (60_000, 10_000)
    assert data.mean.item() == pytest.approx(mean, abs=5e-5)
    assert data.std.item() == pytest.approx(std, abs=5e-5)
    assert data.load().y_train[: len(first_labels)].tolist() == first_labels
