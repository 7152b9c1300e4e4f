from __future__ import annotations

import pytest
import torch

from wrncifar.models.flops import flops_per_image, peak_flops
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


@pytest.mark.parametrize(
    ("name", "dtype", "peak"),
    [
        ("NVIDIA H200", torch.bfloat16, 989.4e12),  # Lightning's table has no plain "H200"
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),  # Lightning's own (dense) entry
        ("NVIDIA H200", torch.float64, None),  # not in the table: no MFU rather than a wrong one
    ],
)
def test_the_peak_of_an_h200_is_dense_like_the_h100s(monkeypatch, name: str, dtype: torch.dtype, peak) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda"), dtype) == peak
