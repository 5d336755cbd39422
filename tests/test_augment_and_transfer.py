"""Augmentation (training batches only) and torchvision models with local weights and a frozen backbone."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import make_config
from hydra.utils import instantiate

from trainlab.dataloader import DataError
from trainlab.model import TorchvisionModel
from trainlab.run import build_data_and_model, train


def digits(*overrides: str):
    data, _ = build_data_and_model(make_config(*overrides))
    return data


def test_augmentation_changes_training_batches_only():
    plain, augmented = digits("augment=none"), digits("augment=strong", "augment.ops.crop.padding=1")
    (x_plain, y_plain), (x_aug, y_aug) = next(plain.train_batches(0)), next(augmented.train_batches(0))
    assert torch.equal(y_plain, y_aug)  # the same samples in the same order...
    changed = (x_plain - x_aug).flatten(1).abs().amax(1) > 1e-4
    assert changed.float().mean() > 0.9  # ...nearly all of them altered
    for split in ("val", "test"):
        for (a, b), (c, d) in zip(plain.batches(split), augmented.batches(split), strict=True):
            assert torch.equal(a, c) and torch.equal(b, d)
    raw = torch.rand(4, 1, 8, 8)
    assert torch.equal(plain.transform(raw), augmented.transform(raw))  # predict's path: no augmentation
    assert torch.equal(next(augmented.train_batches(0))[0], x_aug)  # seeded: the same draw every time


def test_each_sample_draws_its_own_augmentation():
    augment = instantiate(make_config("augment=standard").augment, _convert_="object")
    image = torch.rand(1, 3, 12, 12)
    out = augment(image.expand(64, -1, -1, -1), torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 12, 12)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 20  # 9 x 9 crops x 2 flips to choose from
    flipped = image.flip(-1)[0]
    assert any(torch.equal(o, image[0]) for o in out) and any(torch.equal(o, flipped) for o in out)


def test_augmenting_a_table_is_an_error():
    data = digits("dataset=iris", "augment=standard")
    with pytest.raises(DataError, match="augment=none"):
        next(data.train_batches(0))


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory):
    """A state dict as torchvision's downloads are: the 1000-class ImageNet head included."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v3_small.pth"
    torch.manual_seed(123)
    torch.save(torchvision.models.get_model("mobilenet_v3_small").state_dict(), path)
    return path


def test_torchvision_model_loads_local_weights_and_freezes_the_backbone(mobilenet_weights):
    saved = torch.load(mobilenet_weights, weights_only=True)
    model = TorchvisionModel(
        [3, 32, 32], 4, name="mobilenet_v3_small", weights=str(mobilenet_weights), freeze_backbone=True, options={}
    )
    assert torch.equal(model.net.features[0][0].weight, saved["features.0.0.weight"])
    assert model.head.out_features == 4 and model.net.classifier[-1] is model.head
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"net.classifier.3.weight", "net.classifier.3.bias"}
    model.train()
    assert model.head.training and not model.net.features.training  # frozen batch-norm statistics
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)


def test_frozen_backbone_training_changes_the_head_only(mobilenet_weights, tmp_path):
    overrides = [
        "model=torchvision",
        "model.name=mobilenet_v3_small",
        f"model.weights={mobilenet_weights}",
        "model.freeze_backbone=true",
        "trainer.max_epochs=1",
        "trainer.limit_batches=3",
        "trainer.progress=false",
        "trainer.num_threads=1",
    ]
    train(make_config(*overrides), tmp_path)
    trained = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    saved = torch.load(mobilenet_weights, weights_only=True)
    backbone = [k for k in saved if not k.startswith("classifier.3.")]
    assert all(torch.equal(trained[f"net.{k}"], saved[k]) for k in backbone)  # BN statistics included
    assert trained["net.classifier.3.weight"].shape == (
        10,
        1024,
    )  # digits: 10 classes, 1-channel images fed as RGB


def test_pretrained_weights_by_name_explain_that_nothing_is_downloaded():
    with pytest.raises(ValueError, match=r"nothing is downloaded.*resnet18-f37072fd\.pth"):
        TorchvisionModel(
            [3, 32, 32], 2, name="resnet18", weights="IMAGENET1K_V1", freeze_backbone=False, options={}
        )
