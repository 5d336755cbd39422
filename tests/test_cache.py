"""The decoded-data cache: written on the first load, read on later ones, identical tensors, rebuilt when the
raw files change. Small MNIST-format files are written here and read by torchvision's real reader."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import make_data, write_mnist

from trainlab.dataloader import DataError, TorchvisionImages, cache

TRAIN_IMAGES = "train-images-idx3-ubyte"


def load(root) -> TorchvisionImages:
    return make_data("dataset=mnist", f"paths.data_dir={root}", "dataset.download=false", "dataset.batch_size=16")


def write(root, seed: int = 0) -> None:
    write_mnist(root, n_train=60, n_test=20, seed=seed)


def splits(data: TorchvisionImages) -> list[torch.Tensor]:
    return [data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test]


def assert_same(a: TorchvisionImages, b: TorchvisionImages) -> None:
    for x, y in zip(splits(a), splits(b), strict=True):
        assert torch.equal(x, y)


def overwrite_keeping_stamp(path, data: bytes) -> None:
    """Change a file's bytes but not its size or modification time: only a read can notice."""
    stamp = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


def test_cache_is_written_then_used_and_gives_identical_tensors(tmp_path, caplog):
    write(tmp_path)
    caplog.set_level("INFO", logger="trainlab.dataloader.cache")
    first = load(tmp_path)
    cache_file = tmp_path / "MNIST" / cache.CACHE_NAME
    assert cache_file.is_file() and "cached it in" in caplog.text

    # Zero the pixels in place: a run that decoded the raw files again would see black images.
    images = tmp_path / "MNIST" / "raw" / TRAIN_IMAGES
    header = images.read_bytes()[:16]
    overwrite_keeping_stamp(images, header + bytes(60 * 28 * 28))
    caplog.clear()
    second = load(tmp_path)
    assert "from the cache" in caplog.text
    assert_same(first, second)
    assert second.x_train.std() > 0.5  # normalised real pixels, not the zeros now on disk


def test_changed_raw_files_are_decoded_again(tmp_path):
    write(tmp_path, seed=0)
    first = load(tmp_path)
    (tmp_path / "MNIST").rename(tmp_path / "old")
    write(tmp_path, seed=1)  # new files: other sizes would also do; here only the contents and times
    (tmp_path / "old" / cache.CACHE_NAME).rename(tmp_path / "MNIST" / cache.CACHE_NAME)
    second = load(tmp_path)
    assert not torch.equal(first.x_train, second.x_train)
    reference = cache.fingerprint(tmp_path / "MNIST")
    assert torch.load(tmp_path / "MNIST" / cache.CACHE_NAME, weights_only=True)["fingerprint"] == reference


def test_read_only_data_folder_is_left_alone(tmp_path, monkeypatch):
    data_root, user_cache = tmp_path / "shared", tmp_path / "user-cache"
    write(data_root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(user_cache))
    folders = [data_root / "MNIST", data_root / "MNIST" / "raw"]
    for folder in folders:
        folder.chmod(0o555)
    try:
        first, second = load(data_root), load(data_root)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert not (data_root / "MNIST" / cache.CACHE_NAME).exists()
    assert len(list((user_cache / "trainlab").glob("MNIST-*.pt"))) == 1
    assert_same(first, second)


def test_missing_files_fail_clearly(tmp_path):
    with pytest.raises(DataError, match="MNIST files not found under"):
        load(tmp_path)
