from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.seed_wideresnet import WideResNet as SeedWideResNet
from wrncifar.models.wideresnet import PreActBlock, PreActWideResNet, WideResNet

TINY = [4, 8, 8, 16]


def test_seed_settings_have_the_seed_parameter_count() -> None:
    model = WideResNet(num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == 17_175_444


def test_seed_state_dict_loads_strictly_and_gives_the_seed_outputs() -> None:
    torch.manual_seed(0)
    seed = SeedWideResNet(num_classes=100).eval()
    model = WideResNet(num_classes=100, pooling="seed").eval()
    model.load_state_dict(seed.state_dict(), strict=True)
    assert list(model.state_dict()) == list(seed.state_dict())

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), seed(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["adaptive", "seed"])
@pytest.mark.parametrize("size", [28, 32])
def test_output_shape_for_cifar_and_mnist_sized_inputs(pooling: str, size: int) -> None:
    model = WideResNet(num_classes=10, in_channels=1 if size == 28 else 3, widths=TINY, pooling=pooling)
    out = model(torch.randn(3, model.input_block.cbr[0].in_channels, size, size))
    assert out.shape == (3, 10)


@pytest.mark.parametrize("size", [24, 56, 64])
def test_seed_pooling_on_inputs_it_cannot_pool_to_one_value_names_the_sizes_and_the_fix(size: int) -> None:
    model = WideResNet(num_classes=10, widths=TINY, pooling="seed")
    with pytest.raises(ValueError, match=r"needs a final feature map of 7 to 13 pixels .* use pooling=adaptive"):
        model(torch.randn(1, 3, size, size))
    assert WideResNet(num_classes=10, widths=TINY)(torch.randn(1, 3, size, size)).shape == (1, 10)


def test_seed_pooling_sees_only_the_top_left_7x7_of_the_8x8_map() -> None:
    seed_pool = WideResNet(widths=TINY, pooling="seed").pool
    adaptive_pool = WideResNet(widths=TINY, pooling="adaptive").pool
    feature_map = torch.randn(1, 16, 8, 8)
    edited = feature_map.clone()
    edited[..., 7, :] += 100.0  # the last row and column are outside AvgPool2d(7)'s window
    edited[..., :, 7] += 100.0

    torch.testing.assert_close(seed_pool(feature_map), seed_pool(edited))
    torch.testing.assert_close(seed_pool(feature_map).flatten(), feature_map[..., :7, :7].mean(dim=(2, 3)).flatten())
    assert not torch.allclose(adaptive_pool(feature_map), adaptive_pool(edited))
    torch.testing.assert_close(adaptive_pool(feature_map).flatten(), feature_map.mean(dim=(2, 3)).flatten())


def test_more_blocks_per_stage_continue_the_seed_numbering() -> None:
    model = WideResNet(widths=TINY, blocks_per_stage=3)
    names = [name for name, _ in model.named_children()]
    assert names == [
        "input_block", *[f"block{i}" for i in (1, 2, 3)], "pool1", *[f"block{i}" for i in (4, 5, 6)], "pool2",
        *[f"block{i}" for i in (7, 8, 9)], "pool", "flat", "fc",
    ]  # fmt: skip
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_dropout_is_configurable_and_the_seed_value_is_the_default() -> None:
    assert WideResNet(widths=TINY).block1.dropout.p == 0.01
    assert WideResNet(widths=TINY, dropout=0.3).block6.dropout.p == 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": [16, 160, 320]}, "widths must list 4"),
        ({"widths": [16, 160, 0, 640]}, "widths must all be positive"),
        ({"widths": [16, -1, 320, 640]}, "widths must all be positive"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"in_channels": -3}, "in_channels must be a positive integer"),
        ({"blocks_per_stage": 0}, "blocks_per_stage must be a positive integer"),
        ({"widths": None}, r"widths must list 4 channel counts .*, e\.g\. \[16, 160, 320, 640\]; got None"),
        ({"widths": 640}, "widths must list 4 channel counts"),
        ({"widths": [16, 160, None, 640]}, "widths must all be positive"),
        ({"num_classes": None}, "num_classes must be a positive integer, got None"),
        ({"blocks_per_stage": 2.0}, "blocks_per_stage must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\) \(0 disables it\), got 1\.0"),
        ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\)"),
        ({"dropout": None}, r"dropout must be a number in \[0, 1\) \(0 disables it\), got None"),
        ({"dropout": "0.1"}, r"dropout must be a number in \[0, 1\) \(0 disables it\), got '0\.1'"),
        ({"dropout": True}, r"dropout must be a number in \[0, 1\)"),
        ({"dropout": float("nan")}, r"dropout must be a number in \[0, 1\)"),
        ({"pooling": None}, "pooling must be 'adaptive' or 'seed', got None"),
        ({"init": None}, "init must be 'pytorch' or 'wrn', got None"),
        ({"pooling": "max"}, "pooling must be 'adaptive' or 'seed'"),
    ],
)
def test_invalid_settings_fail_at_construction(kwargs: dict, message: str) -> None:
    """One ValueError naming the setting, also for a null from the config (`model.net.dropout=null`)."""
    with pytest.raises(ValueError, match=message):
        WideResNet(**kwargs)


def test_dropout_zero_disables_it_and_an_integer_zero_is_accepted() -> None:
    assert WideResNet(widths=TINY, dropout=0).block1.dropout.p == 0


def test_preact_variant_has_the_seed_widths_and_about_its_parameter_count() -> None:
    preact = PreActWideResNet(num_classes=100)
    count = sum(p.numel() for p in preact.parameters())
    assert count == 17_174_324  # 1,120 fewer than the seed: BatchNorms move to conv inputs, no projection bias
    assert [stage[0].conv1.out_channels for stage in preact.stages] == [160, 320, 640]
    assert all(len(stage) == 2 for stage in preact.stages) and preact.fc.in_features == 640
    assert preact(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_preact_block_runs_bn_relu_conv_twice_and_adds_the_residual_last() -> None:
    block = PreActBlock(4, 8, dropout=0.0).eval()
    calls: list[str] = []
    for name, module in block.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    x = torch.randn(2, 4, 8, 8)
    out = block(x)
    assert calls == ["bn1", "relu1", "shortcut", "conv1", "bn2", "relu2", "dropout", "conv2"]
    # Nothing after the addition: the output is the second conv plus the projected pre-activation, and can be
    # negative (a ReLU after the sum could not).
    activated = block.relu1(block.bn1(x))
    branch = block.conv2(block.relu2(block.bn2(block.conv1(activated))))
    torch.testing.assert_close(out, branch + block.shortcut(activated))
    assert (out < 0).any()


def test_preact_block_of_equal_widths_adds_the_raw_input() -> None:
    block = PreActBlock(8, 8).eval()
    assert block.shortcut is None
    with torch.no_grad():
        block.conv2.weight.zero_()  # the residual branch adds nothing: the block is the identity
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("pooling", ["adaptive", "seed"])
def test_preact_variant_takes_the_seed_classes_options(pooling: str) -> None:
    model = PreActWideResNet(num_classes=10, widths=TINY, blocks_per_stage=3, dropout=0.3, pooling=pooling)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(len(stage) == 3 for stage in model.stages) and model.stages[0][0].dropout.p == 0.3
    with pytest.raises(ValueError, match="widths must list 4 channel counts"):
        PreActWideResNet(widths=[8, 16])


@pytest.mark.parametrize("network", [WideResNet, PreActWideResNet])
def test_wrn_init_draws_each_convolution_from_he_normal_fan_out_and_zeroes_the_biases(network) -> None:
    torch.manual_seed(0)
    net = network(num_classes=100, init="wrn")  # the seed's widths: enough weights per layer to measure
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            expected = math.sqrt(2 / (module.out_channels * kh * kw))
            n = module.weight.numel()
            # The sample std of n normal draws is within a few 1/sqrt(2n) of the true one.
            assert abs(module.weight.std().item() / expected - 1) < 5 / math.sqrt(2 * n), name
            assert abs(module.weight.mean().item()) < 5 * expected / math.sqrt(n), name
        if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
            assert not module.bias.any(), f"{name}: bias not zero"
        if isinstance(module, nn.BatchNorm2d):
            assert (module.weight == 1).all() and not module.bias.any(), name


def test_the_default_init_is_pytorchs_with_a_245x_smaller_3x3_std_than_the_wrn_init() -> None:
    torch.manual_seed(0)
    default, wrn = WideResNet(num_classes=100), WideResNet(num_classes=100, init="wrn")
    conv = "block4.layer2.cbr.0.weight"  # 320 → 320 channels, 3×3
    ratio = wrn.state_dict()[conv].std() / default.state_dict()[conv].std()
    assert ratio.item() == pytest.approx(math.sqrt(6), rel=0.01)  # sqrt(2 / 9c) against 1 / sqrt(3 · 9c)
    with pytest.raises(ValueError, match="init must be 'pytorch' or 'wrn'"):
        WideResNet(init="xavier")
