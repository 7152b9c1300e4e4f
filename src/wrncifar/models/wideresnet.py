"""The WideResNet of the seed design, made configurable without breaking its state_dict.

Module names and nesting are the seed's (`input_block`, `block1`…`block6`, `pool1`, `pool2`, `pool`,
`flat`, `fc`; `cbrblock.cbr`; `conv_block.layer1/dropout/layer2/scale`), so a state_dict saved from the
seed's code loads with `strict=True`. Blocks are numbered consecutively across stages; with more than two
blocks per stage the names simply continue (`block7`, …).

`PreActWideResNet` is the ablation beside it: the same widths, stages, max-pooling and global pooling, with the
pre-activation block of the WRN paper (BN → ReLU → conv, twice; nothing after the residual addition).
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import nn

Pooling = Literal["adaptive", "seed"]
# `pytorch`: each layer's own default (the seed's code keeps it). `wrn`: the WRN authors' (their Torch code's MSRinit
# and FCinit): convolutions from a normal of std sqrt(2 / (k·k·out_channels)) (He et al. 2015, fan-out), 2.45× the
# default's std for a 3×3 convolution with as many inputs as outputs, and zero biases.
Init = Literal["pytorch", "wrn"]

# Seed channels: 3 → 16 (stem) → 160 → 320 → 640, i.e. WRN-16-10's widths with the seed's stem.
SEED_WIDTHS = (16, 160, 320, 640)


class cbrblock(nn.Module):  # noqa: N801 - the seed's name; state_dict keys depend on the attributes only
    """3×3 convolution ('same' padding, no bias) → BatchNorm → ReLU."""

    def __init__(self, input_channels: int, output_channels: int) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, kernel_size=3, stride=(1, 1), padding="same", bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class conv_block(nn.Module):  # noqa: N801 - the seed's name
    """Two cbrblocks with dropout between them, plus the (optionally 1×1-projected) input."""

    def __init__(self, input_channels: int, output_channels: int, scale_input: bool, dropout: float = 0.01) -> None:
        super().__init__()
        self.scale_input = scale_input
        if self.scale_input:
            # The seed's projection keeps its bias; keeping it keeps the state_dict loadable.
            self.scale = nn.Conv2d(input_channels, output_channels, kernel_size=1, stride=(1, 1), padding="same")
        self.layer1 = cbrblock(input_channels, output_channels)
        self.dropout = nn.Dropout(p=dropout)
        self.layer2 = cbrblock(output_channels, output_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.scale(x) if self.scale_input else x
        out = self.layer2(self.dropout(self.layer1(x)))
        return out + residual


class SeedPool(nn.AvgPool2d):
    """The seed's `AvgPool2d(7)`, which gives one value per channel only on final maps of 7 to 13 pixels a side
    (inputs of 28 to 55 pixels): on others it stops with what to use instead, not with the linear layer's shape
    error (a larger map pools to 2×2 or more) or an empty output (a smaller one)."""

    def __init__(self) -> None:
        super().__init__(7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if not (7 <= height <= 13 and 7 <= width <= 13):
            raise ValueError(
                f"pooling=seed (the seed's AvgPool2d(7)) needs a final feature map of 7 to 13 pixels a side, from "
                f"inputs of 28 to 55 pixels; this input gives {height}×{width}: use pooling=adaptive, which averages "
                "a map of any size"
            )
        return super().forward(x)


class _StagedNetwork(nn.Module):
    """The constructor both networks share: check the arguments, build the body (`_build`, per network), then the
    head every variant ends with (global pooling, flatten, linear layer), registered last as in the seed."""

    def __init__(
        self,
        num_classes: int = 100,
        in_channels: int = 3,
        widths: Sequence[int] = SEED_WIDTHS,
        blocks_per_stage: int = 2,
        dropout: float = 0.01,
        pooling: Pooling = "adaptive",
        init: Init = "pytorch",
    ) -> None:
        super().__init__()
        if isinstance(widths, str) or not isinstance(widths, Iterable):
            raise ValueError(
                f"widths must list {len(SEED_WIDTHS)} channel counts (stem, stage 1, stage 2, stage 3), "
                f"e.g. {list(SEED_WIDTHS)}; got {widths!r}"
            )
        widths = tuple(widths)
        _check_arguments(num_classes, in_channels, widths, blocks_per_stage, dropout, pooling)
        if init not in ("pytorch", "wrn"):
            raise ValueError(f"init must be 'pytorch' or 'wrn', got {init!r}")
        self.num_classes = num_classes
        self._build(in_channels, widths, blocks_per_stage, dropout)
        self.pool = SeedPool() if pooling == "seed" else nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)
        if init == "wrn":
            wrn_init(self)

    def _build(self, in_channels: int, widths: tuple[int, ...], blocks_per_stage: int, dropout: float) -> None:
        raise NotImplementedError

    def residual_blocks(self) -> list[nn.Module]:
        """The residual blocks in the order the input passes them: what `model.compile_scope=blocks` compiles."""
        raise NotImplementedError


class WideResNet(_StagedNetwork):
    """The seed WideResNet: a stem, three stages of residual blocks with max-pooling between, global pooling, fc.

    Args:
        num_classes: outputs of the final linear layer.
        in_channels: channels of the input image.
        widths: stem width followed by the width of each of the three stages.
        blocks_per_stage: residual blocks per stage (the seed uses 2).
        dropout: dropout probability between the two convolutions of each block (the seed uses 0.01).
        pooling: `adaptive` averages the whole final feature map, whatever the input size. `seed` is the seed's
            `AvgPool2d(7)`: on 32×32 inputs the final map is 8×8 and it averages only the top-left 7×7 of it
            (the last row and column are dropped); it needs a final map of 7×7 to 13×13 (inputs of 28 to 55
            pixels a side).
        init: `pytorch` keeps each layer's default initialisation (as the seed's code does); `wrn` is the WRN
            authors' (see `Init`).
    """

    def _build(self, in_channels: int, widths: tuple[int, ...], blocks_per_stage: int, dropout: float) -> None:
        self.input_block = cbrblock(in_channels, widths[0])
        # Attribute names of each stage's blocks; the attributes themselves carry the seed's names.
        self.stage_blocks: tuple[tuple[str, ...], ...] = tuple(
            tuple(f"block{stage * blocks_per_stage + i + 1}" for i in range(blocks_per_stage))
            for stage in range(len(widths) - 1)
        )
        for stage, (stage_in, stage_out) in enumerate(itertools.pairwise(widths), start=1):
            for i, name in enumerate(self.stage_blocks[stage - 1]):
                first = i == 0
                block = conv_block(stage_in if first else stage_out, stage_out, scale_input=first, dropout=dropout)
                setattr(self, name, block)
            if stage < len(self.stage_blocks):
                setattr(self, f"pool{stage}", nn.MaxPool2d(2))

    def residual_blocks(self) -> list[nn.Module]:
        return [getattr(self, name) for names in self.stage_blocks for name in names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.input_block(x)
        for stage, names in enumerate(self.stage_blocks, start=1):
            for name in names:
                out = getattr(self, name)(out)
            if stage < len(self.stage_blocks):
                out = getattr(self, f"pool{stage}")(out)
        return self.fc(self.flat(self.pool(out)))


class PreActBlock(nn.Module):
    """The WRN paper's pre-activation block: BN → ReLU → 3×3 conv → BN → ReLU → dropout → 3×3 conv, plus the input.

    The sum leaves the block as it is (no ReLU after the addition), so the identity path runs through the whole
    stage untouched. When the width changes, a bias-free 1×1 convolution of the pre-activated input is the shortcut.
    """

    def __init__(self, input_channels: int, output_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(input_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(input_channels, output_channels, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(output_channels)
        self.relu2 = nn.ReLU()
        self.dropout = nn.Dropout(p=dropout)
        self.conv2 = nn.Conv2d(output_channels, output_channels, kernel_size=3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(input_channels, output_channels, kernel_size=1, bias=False)
            if input_channels != output_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        return out + residual


class PreActWideResNet(_StagedNetwork):
    """`WideResNet` with pre-activation blocks: a 3×3 conv stem, three stages of `PreActBlock`s with max-pooling
    between them, BN → ReLU, global pooling and the linear layer. Arguments as `WideResNet`'s.

    With the seed widths it has 17,174,324 parameters, 1,120 fewer than the seed (each BatchNorm normalises a
    convolution's input instead of its output, the projections have no bias, and a final BatchNorm is added), so
    the comparison isolates the order of the block's operations.
    """

    def _build(self, in_channels: int, widths: tuple[int, ...], blocks_per_stage: int, dropout: float) -> None:
        self.input_block = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(PreActBlock(stage_in if i == 0 else stage_out, stage_out, dropout) for i in range(blocks_per_stage))
            )
            for stage_in, stage_out in itertools.pairwise(widths)
        )
        self.downsample = nn.MaxPool2d(2)  # between stages, as in the seed
        self.final_bn = nn.BatchNorm2d(widths[-1])
        self.final_relu = nn.ReLU()

    def residual_blocks(self) -> list[nn.Module]:
        return [block for stage in self.stages for block in stage]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.input_block(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                out = self.downsample(out)
            out = stage(out)
        out = self.final_relu(self.final_bn(out))
        return self.fc(self.flat(self.pool(out)))


def wrn_init(net: nn.Module) -> None:
    """The WRN authors' initialisation (see `Init`); BatchNorm keeps weight 1 and bias 0, as in their code."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


def _check_arguments(
    num_classes: int,
    in_channels: int,
    widths: tuple[int, ...],
    blocks_per_stage: int,
    dropout: float,
    pooling: str,
) -> None:
    if len(widths) != len(SEED_WIDTHS):
        raise ValueError(
            f"widths must list {len(SEED_WIDTHS)} channel counts (stem, stage 1, stage 2, stage 3), "
            f"e.g. {list(SEED_WIDTHS)}; got {list(widths)} ({len(widths)} values)"
        )
    for name, value in [
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("blocks_per_stage", blocks_per_stage),
    ]:
        if not _is_positive_int(value):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not all(_is_positive_int(w) for w in widths):
        raise ValueError(f"widths must all be positive integers, got {list(widths)}")
    # Type first: `model.net.dropout=null` reaches here as None, which `<=` would reject with a TypeError.
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1) (0 disables it), got {dropout!r}")
    if pooling not in ("adaptive", "seed"):
        raise ValueError(f"pooling must be 'adaptive' or 'seed', got {pooling!r}")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
