"""torch.compile support: whether it can run here, and whether a network was compiled in place."""

from __future__ import annotations

import torch
from torch import nn


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


def is_compiled(net: nn.Module) -> bool:
    """True once `net.compile()` has run (the module then calls its compiled forward, with unchanged names)."""
    return getattr(net, "_compiled_call_impl", None) is not None
