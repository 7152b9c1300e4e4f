"""`Uint8ImageClassifier`: raw uint8 images in, the evaluation pipeline's logits out, to the last bit."""

from __future__ import annotations

import pytest
import torch

from wrncifar.data.transforms import CIFAR100_MEAN, CIFAR100_STD, eval_transform
from wrncifar.models.uint8_images import Uint8ImageClassifier
from wrncifar.models.wideresnet import WideResNet


def test_uint8_images_give_the_logits_of_the_evaluation_pipeline_exactly() -> None:
    torch.manual_seed(0)
    net = WideResNet(widths=[8, 16, 32, 64]).eval()
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    normalised = torch.stack([eval_transform()(image) for image in images])  # what the test loader feeds the net
    model = Uint8ImageClassifier(net, CIFAR100_MEAN, CIFAR100_STD)
    with torch.no_grad():
        assert torch.equal(model(images), net(normalised))


def test_normalize_false_takes_normalised_images_and_is_the_network_itself() -> None:
    net = WideResNet(widths=[8, 16, 32, 64]).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(Uint8ImageClassifier(net, CIFAR100_MEAN, CIFAR100_STD, normalize=False)(images), net(images))


def test_the_statistics_are_buffers_that_follow_the_module_and_mismatched_ones_are_refused() -> None:
    model = Uint8ImageClassifier(torch.nn.Identity(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert set(dict(model.named_buffers())) == {"mean", "std"}
    out = model(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(out, torch.full((1, 3, 2, 2), 2.0))  # (1 - 0.5) / 0.25
    with pytest.raises(ValueError, match="one value per channel"):
        Uint8ImageClassifier(torch.nn.Identity(), (0.5, 0.5, 0.5), (0.25,))
