"""Dataset expectations (the data suite doubles as a check on what a model is trained on)."""

from __future__ import annotations

import torch

from mnistops.training.data import Mnist, split_train_val


def test_sizes_and_types(mnist: Mnist) -> None:
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10000, 28, 28) and mnist.test_labels.shape == (10000,)
    assert mnist.train_labels.dtype == torch.int64


def test_labels_cover_all_classes_roughly_balanced(mnist: Mnist) -> None:
    for labels in (mnist.train_labels, mnist.test_labels):
        counts = torch.bincount(labels, minlength=10)
        assert int(labels.min()) == 0 and int(labels.max()) == 9
        share = counts.float() / counts.sum()
        assert float(share.min()) > 0.08 and float(share.max()) < 0.12


def test_pixels_look_like_digits(mnist: Mnist) -> None:
    x = mnist.test_images.float()
    assert float(x.max()) == 255.0 and float(x.min()) == 0.0
    # MNIST: ~19% ink, background black, digits centred in the 20x20 box
    ink = (mnist.test_images > 0).float().mean()
    assert 0.15 < float(ink) < 0.25
    assert float(x[:, :2, :].mean()) < 1.0  # top border is (almost) empty


def test_split_is_fixed_disjoint_and_sized(mnist: Mnist) -> None:
    a, b = split_train_val(mnist), split_train_val(mnist)
    assert len(a.train_x) == 55000 and len(a.val_x) == 5000
    assert torch.equal(a.val_y, b.val_y) and torch.equal(a.val_x, b.val_x)
    # the validation images are not in the training part: compare exact image hashes
    train_keys = {bytes(img.numpy()) for img in a.train_x[::11]}
    assert not any(bytes(img.numpy()) in train_keys for img in a.val_x[:500])
    assert len(torch.unique(a.val_y)) == 10


def test_md5_identifies_the_files(mnist: Mnist) -> None:
    assert len(mnist.md5) == 32
