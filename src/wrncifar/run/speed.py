"""The fast path by default. On a CUDA GPU the configs' `auto` settings become the choices that make training
about three times faster without changing the recipe (docs/benchmarks.md); on the CPU they stay what they always
were (fp32, eager, loader workers). A value given explicitly always wins, and the start-up line says how to turn
each choice off.

    setting               auto on a CUDA GPU                         auto on the CPU
    trainer.precision     bf16-mixed (16-mixed without bf16)         32-true
    data.on_device        true (false, with the reason, for          false
                          data.policy other than none)
    model.channels_last   true                                       false
    model.compile         true for runs of COMPILE_FROM_EPOCHS or    false
                          more epochs, where Triton is available
    data.drop_last        true when compiling (one batch shape)      false
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, open_dict

from wrncifar.run.config_validation import ConfigError
from wrncifar.run.run_folder import unwritable_reason

log = logging.getLogger(__name__)

AUTO = "auto"
# Compiling the seed network takes about a minute and makes a bf16 step 1.19× faster on an H100 (19,335 → 23,043
# images/s, docs/benchmarks.md): it pays from about 5 million training images, ≈ 100 epochs of CIFAR's 45,000.
COMPILE_FROM_EPOCHS = 100


@dataclass(frozen=True)
class Hardware:
    """What the speed choices depend on: the device a run trains on and what it supports."""

    cuda: bool
    name: str = "CPU"
    bf16: bool = False
    triton: bool = False

    @classmethod
    def for_accelerator(cls, accelerator: str | None) -> Hardware:
        """The device Lightning will pick for `trainer.accelerator` on this machine."""
        if accelerator not in (None, "auto", "gpu", "cuda") or not torch.cuda.is_available():
            return cls(cuda=False)
        from torch.utils._triton import has_triton  # only where there is a GPU

        return cls(
            cuda=True, name=torch.cuda.get_device_name(), bf16=torch.cuda.is_bf16_supported(), triton=has_triton()
        )


def resolve_speed(cfg: DictConfig, hardware: Hardware | None = None, training: bool = True) -> list[str]:
    """Replace the `auto` speed settings of `cfg` (see the module's table) by this machine's choices, log them in
    one line, and return the reasons for any choice that fell back. Without `training` (a test or an evaluation
    only) nothing is compiled: one pass over the test set does not repay the compilation."""
    trainer, data, model = cfg.get("trainer") or {}, cfg.get("data") or {}, cfg.get("model") or {}
    if AUTO not in (
        trainer.get("precision"),
        data.get("on_device"),
        data.get("drop_last"),
        model.get("channels_last"),
        model.get("compile"),
    ):
        return []
    hw = hardware or Hardware.for_accelerator(trainer.get("accelerator"))
    fallbacks: list[str] = []
    with open_dict(cfg):
        if trainer.get("precision") == AUTO:
            trainer.precision = ("bf16-mixed" if hw.bf16 else "16-mixed") if hw.cuda else "32-true"
        if data.get("on_device") == AUTO:
            policy = data.get("policy", "none")
            data.on_device = hw.cuda and policy == "none"
            if hw.cuda and policy != "none":
                fallbacks.append(f"data.policy={policy} runs in CPU loader workers, so the data stays on the CPU")
        if model.get("channels_last") == AUTO:
            model.channels_last = hw.cuda
        if model.get("compile") == AUTO:
            epochs = trainer.get("max_epochs") or 0
            model.compile = training and hw.cuda and hw.triton and epochs >= COMPILE_FROM_EPOCHS
            if training and hw.cuda and not hw.triton:
                fallbacks.append("torch.compile needs Triton, which is not installed: eager")
        if data.get("drop_last") == AUTO:
            data.drop_last = bool(model.get("compile"))
    log.info("Speed on %s: %s%s", hw.name, _describe(trainer, data, model), "".join(f"; {f}" for f in fallbacks))
    return fallbacks


def _describe(trainer: DictConfig, data: DictConfig, model: DictConfig) -> str:
    where = "data on the GPU" if data.get("on_device") else "data from CPU loader workers"
    parts = [str(trainer.get("precision")), where]
    parts.append("channels_last" if model.get("channels_last") else "NCHW")
    parts.append("torch.compile" if model.get("compile") else "eager")
    off = [
        "trainer.precision=32-true" if trainer.get("precision") != "32-true" else "",
        "data.on_device=false" if data.get("on_device") else "",
        "model.channels_last=false" if model.get("channels_last") else "",
        "model.compile=false" if model.get("compile") else "",
    ]
    off = [o for o in off if o]
    return ", ".join(parts) + (f" (off with {' '.join(off)})" if off else "")


def use_compile_cache(cfg: DictConfig) -> Path | None:
    """Point torch.compile's caches at `paths.compile_cache_dir` when the run compiles (the environment variable is
    what Inductor, its compile workers and a distributed run's other processes read); the folder, refused with the
    reason when it cannot be written. Returns the folder, or None for a run that does not compile."""
    folder = (cfg.get("paths") or {}).get("compile_cache_dir")
    if not (cfg.get("model") or {}).get("compile") or not folder:
        return None
    folder = Path(str(folder)).expanduser().absolute()
    reason = unwritable_reason(folder)
    if reason is not None:
        raise ConfigError(
            f"paths.compile_cache_dir={folder} cannot be created: {reason}. Give a writable folder with "
            "paths.compile_cache_dir=… (or TORCHINDUCTOR_CACHE_DIR=…), or train without compiling: model.compile=false"
        )
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder
