from __future__ import annotations

import pytest
import torch

from wrncifar.models.flops import flops_per_image
from wrncifar.models.wideresnet import WideResNet


def test_seed_network_costs_14_47_gflop_per_training_image() -> None:
    net = WideResNet(num_classes=100)
    train = flops_per_image(net, train=True)
    forward = flops_per_image(net, train=False)
    assert train == pytest.approx(14.47e9, rel=1e-3)
    # Backward is two products per forward product (input and weight gradients), except that the first
    # convolution needs no input gradient: a little under three forwards in all.
    assert 2.95 < train / forward < 3.0


def test_counting_leaves_the_network_as_it_was() -> None:
    net = WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flops_per_image(net, train=True)
    assert not net.training
    for key, value in net.state_dict().items():
        assert value.device.type == "cpu"
        assert torch.equal(value, before[key]), key
