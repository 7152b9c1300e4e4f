"""torch.compile support: whether it can run here, compiling a network in place (whole, or block by block), and
what the compilation cache did.

Two scopes (`model.compile_scope`):

- `network`: one graph of the whole network's forward (and one of its backward): the most room for fusion.
- `blocks`: regional compilation. Each residual block is compiled on its own, the stem, pooling and head stay
  eager. Blocks of the same shape share one compiled graph (every block runs the same code, and parameters are
  graph inputs), so a deep network (WRN-28-10: 4 blocks per stage) compiles each shape once instead of tracing
  every block; the seed's 2 blocks per stage all differ in shape and gain less.

Either way the network is compiled in place: parameter names, and so checkpoints, do not change.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import nn

CompileScope = Literal["network", "blocks"]
COMPILE_SCOPES: tuple[str, ...] = ("network", "blocks")
# Compiled variants one block may need: train and eval mode, each for the full batch and the last, shorter ones
# of the training, validation and test sets. Dynamo allows 8 per piece of code by default, and with regional
# compilation all blocks run the same code.
VARIANTS_PER_BLOCK = 8


class CompileUnavailableError(RuntimeError):
    """torch.compile cannot run in this environment."""


def require_compile_support(device: torch.device | None = None) -> None:
    """Raise CompileUnavailableError, saying why and how to go on, when torch.compile cannot run on `device`."""
    import torch._dynamo

    fix = "; train without it: model.compile=false"
    if not torch._dynamo.is_dynamo_supported():
        raise CompileUnavailableError(f"model.compile=true: torch.compile does not support this Python/platform{fix}")
    if device is not None and device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise CompileUnavailableError(f"model.compile=true needs Triton for {device}, and it is not installed{fix}")


def residual_blocks(net: nn.Module) -> list[nn.Module]:
    """The blocks `compile_scope=blocks` compiles; a ValueError that says what to do for a network without them."""
    blocks = getattr(net, "residual_blocks", None)
    if not callable(blocks):
        raise ValueError(
            f"model.compile_scope=blocks needs a network that lists its residual blocks (residual_blocks()), and "
            f"{type(net).__name__} does not: use model.compile_scope=network"
        )
    return list(blocks())


def check_compile_scope(net: nn.Module, scope: str) -> None:
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile_scope must be one of {', '.join(COMPILE_SCOPES)}, got {scope!r}")
    if scope == "blocks":
        residual_blocks(net)


def compile_in_place(net: nn.Module, scope: CompileScope = "network", mode: str | None = None) -> None:
    """`torch.compile` `net` (scope `network`) or each of its residual blocks (scope `blocks`) in place."""
    check_compile_scope(net, scope)
    if scope == "network":
        net.compile(mode=mode)
        return
    blocks = residual_blocks(net)
    _allow_recompiles(VARIANTS_PER_BLOCK * len(blocks))
    for block in blocks:
        # Static shapes: a block of a new shape gets its own graph instead of turning every later one dynamic.
        block.compile(mode=mode, dynamic=False)


def network_is_compiled(net: nn.Module, scope: CompileScope = "network") -> bool:
    if scope == "blocks":
        return all(is_compiled(block) for block in residual_blocks(net))
    return is_compiled(net)


def is_compiled(net: nn.Module) -> bool:
    """True once `net.compile()` has run (the module then calls its compiled forward, with unchanged names)."""
    return getattr(net, "_compiled_call_impl", None) is not None


def _allow_recompiles(count: int) -> None:
    """Raise Dynamo's limits on compiled variants of one piece of code to at least `count` (past them it would
    run that code eagerly, silently slower). The option names changed in PyTorch 2.7; both are handled."""
    import torch._dynamo.config as dynamo

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo, name) and getattr(dynamo, name) < count:
            setattr(dynamo, name, count)


def compile_cache_summary() -> str | None:
    """What Inductor compiled in this process so far and how much of it came from its on-disk cache, or None when
    nothing was compiled: `torch.compile: 4 graphs, 4 from the cache in /…/torch_compile`."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    hits, misses, bypasses = (inductor[f"fxgraph_cache_{what}"] for what in ("hit", "miss", "bypass"))
    graphs = hits + misses + bypasses
    if not graphs:
        return None
    where = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "Inductor's default folder")
    return f"torch.compile: {graphs} graphs, {hits} from the cache in {where}"
