"""Class probabilities of a network over a loader: the plain pass, and flip test-time augmentation."""

from __future__ import annotations

import logging

import torch
from torch import nn

from wrncifar.analysis.predictions import predict
from wrncifar.models.wideresnet import WideResNet

NUM_CLASSES = 10


def tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return WideResNet(num_classes=NUM_CLASSES, widths=[8, 16, 32, 64], blocks_per_stage=1)


class FlipInvariant(nn.Module):
    """A network that cannot tell an image from its mirror image: logits of both, summed."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.net(x.flip(-1))


def batches(n: int = 24, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    labels = torch.randint(NUM_CLASSES, (n,), generator=generator)
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, n, size)]


def test_plain_predictions_are_the_networks_softmax_in_loader_order() -> None:
    net, data = tiny_network().eval(), batches()
    result = predict(net, data)
    assert list(result) == ["plain"]
    images, labels = torch.cat([x for x, _ in data]), torch.cat([y for _, y in data])
    with torch.no_grad():
        expected = net(images).log_softmax(1)
    torch.testing.assert_close(result["plain"].log_probs, expected)
    assert torch.equal(result["plain"].labels, labels)


def test_flip_tta_averages_the_probabilities_of_each_image_and_its_mirror_image() -> None:
    net, data = tiny_network().eval(), batches()
    result = predict(net, data, tta="flip")
    images = torch.cat([x for x, _ in data])
    with torch.no_grad():
        mirrored = torch.stack([image[:, :, torch.arange(31, -1, -1)] for image in images])  # column 31 - j
        expected = ((net(images).softmax(1) + net(mirrored).softmax(1)) / 2).log()
    torch.testing.assert_close(result["flip"].log_probs, expected)
    torch.testing.assert_close(result["plain"].log_probs, predict(net, data)["plain"].log_probs)
    assert torch.equal(result["flip"].labels, result["plain"].labels)
    assert not torch.allclose(result["flip"].log_probs, result["plain"].log_probs)  # this network sees the flip


def test_flip_tta_changes_nothing_for_a_network_blind_to_the_flip() -> None:
    """Predictions change only through the mirrored image: where it looks the same to the network, no change."""
    result = predict(FlipInvariant(tiny_network()), batches(), tta="flip")
    torch.testing.assert_close(result["flip"].log_probs, result["plain"].log_probs)


def test_predict_runs_in_eval_mode_and_restores_the_mode() -> None:
    net = tiny_network().train()
    first = predict(net, batches())["plain"].log_probs
    assert net.training  # restored
    torch.testing.assert_close(predict(net, batches())["plain"].log_probs, first)  # BatchNorm running stats, no update


def test_a_long_prediction_pass_logs_its_progress(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="wrncifar.analysis.predictions"):
        predict(tiny_network(), batches(), every_n_seconds=1e-9)  # a line is due after every batch
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" · ")[1] for line in lines] == ["batch 1/3", "batch 2/3", "batch 3/3"]
    assert all(line.startswith("Predicting") and " · ends in " in line for line in lines)
