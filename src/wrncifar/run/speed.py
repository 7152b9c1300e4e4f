"""The fast path by default. On a CUDA GPU the configs' `auto` settings become the choices that make training
about three times faster without changing the recipe (docs/benchmarks.md); on the CPU precision and execution stay
what they always were (fp32, eager), and only the data path is the faster one there too. A value given explicitly
always wins, and the start-up line says how to turn each choice off.

    setting               auto on a CUDA GPU                         auto on the CPU
    trainer.precision     bf16-mixed (16-mixed on GPUs without       32-true
                          bf16 arithmetic: before Ampere)
    trainer.benchmark     true: cuDNN times its convolution          Lightning's default
                          algorithms once per shape (not with
                          trainer.deterministic=true)
    data.on_device        true (false, with the reason, for          the same: batches cut and augmented in the
                          data.policy other than none)               training process, no loader workers (1.1–1.3×
                                                                     the steps, a faster start and an exact
                                                                     mid-epoch resume: docs/benchmarks.md)
    model.channels_last   true                                       false
    model.compile         true for runs long enough to repay the     false
                          compilation (`too_short_to_compile`:
                          the limits, fast_dev_run and
                          limit_train_batches counted), where
                          Triton is available
    data.drop_last        true when compiling (one batch shape)      false

An Apple GPU (`trainer=mps`) is treated as the CPU column, with its own name in the start-up line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from wrncifar.run.config_validation import ConfigError
from wrncifar.run.run_folder import unwritable_reason

log = logging.getLogger(__name__)

AUTO = "auto"
# Compiling the seed network takes about a minute and makes a bf16 step 1.19× faster on an H100 (19,335 → 23,043
# images/s, docs/benchmarks.md): it pays from about 5 million training images, ≈ 100 epochs of CIFAR's 45,000,
# or from about ten minutes of training.
COMPILE_FROM_EPOCHS = 100
COMPILE_FROM_SECONDS = 600
TRAIN_IMAGES_PER_EPOCH = 45_000  # CIFAR's training split: what a limit in steps is measured against


@dataclass(frozen=True)
class Hardware:
    """What the speed choices depend on: the device a run trains on and what it supports."""

    cuda: bool
    name: str = "CPU"
    bf16: bool = False
    triton: bool = False
    mps: bool = False
    dynamo: bool = True  # torch.compile supports this Python (not every new Python on an older torch)

    @property
    def gpu(self) -> bool:
        return self.cuda or self.mps

    @classmethod
    def for_accelerator(cls, accelerator: str | None, devices: Any = None) -> Hardware:
        """The device Lightning will pick for `trainer.accelerator` and `trainer.devices` on this machine (the
        first of the GPUs a list of indices names)."""
        if accelerator in (None, "auto", "gpu", "mps") and _mps_available() and not torch.cuda.is_available():
            return cls(cuda=False, name="Apple GPU (MPS)", mps=True)
        if accelerator not in (None, "auto", "gpu", "cuda") or not torch.cuda.is_available():
            return cls(cuda=False)
        from torch._dynamo import is_dynamo_supported  # only where there is a GPU
        from torch.utils._triton import has_triton

        index = _first_gpu(devices)
        name, bf16 = torch.cuda.get_device_name(index), _bf16_arithmetic(index)
        return cls(cuda=True, name=name, bf16=bf16, triton=has_triton(), dynamo=is_dynamo_supported())


def _first_gpu(devices: Any) -> int:
    """The index of the first GPU `trainer.devices` names: a list (`[2, 3]`) or a string of them (`"2,3"`); 0 for a
    count, `auto`, or a value Lightning will refuse itself."""
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, Sequence) and not isinstance(devices, str) and devices:
        first = str(devices[0]).strip()
        return int(first) if first.isdigit() else 0
    return 0


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _bf16_arithmetic(index: int) -> bool:
    """Whether GPU `index` computes in bf16 itself: CUDA compute capability 8.0 or later (Ampere on), ROCm's own
    answer. `torch.cuda.is_bf16_supported()` also says yes where bf16 is only emulated (a T4, a V100), slowly, and
    where Inductor's bf16 kernels are not supported: there fp16 with a gradient scaler is the fast choice."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def too_short_to_compile(trainer: DictConfig, batch_size: Any) -> str | None:
    """The settings that keep the run from repaying a compilation, as `key=value`s for the start-up line; None when
    every limit set (`max_epochs` of `limit_train_batches`' share of an epoch, `max_steps` at `batch_size`,
    `max_time`) allows at least COMPILE_FROM_EPOCHS epochs' worth of images or COMPILE_FROM_SECONDS of training:
    training stops at the first limit reached. `fast_dev_run` (true or a count) trains that many batches, never
    enough. A value that is not a number is left to the config's checks, which run next and name it."""
    quick = trainer.get("fast_dev_run")
    if quick is True or (_is_int(quick) and quick > 0):
        return f"trainer.fast_dev_run={str(quick).lower()}"
    limit, share = trainer.get("limit_train_batches"), 1.0  # the share of each epoch trained
    if _is_int(limit) and limit > 0 and _is_int(batch_size) and batch_size > 0:  # a count of batches
        share = min(1.0, limit * batch_size / TRAIN_IMAGES_PER_EPOCH)
    elif isinstance(limit, float) and 0 < limit < 1:  # a share of the epoch
        share = limit
    epochs = trainer.get("max_epochs")
    if _is_int(epochs) and epochs >= 0 and epochs * share < COMPILE_FROM_EPOCHS:
        return f"trainer.max_epochs={epochs}" + (f" trainer.limit_train_batches={limit}" if share < 1 else "")
    steps = trainer.get("max_steps")
    images = steps * batch_size if _is_int(steps) and _is_int(batch_size) and steps >= 0 else None
    if images is not None and images < COMPILE_FROM_EPOCHS * TRAIN_IMAGES_PER_EPOCH:
        return f"trainer.max_steps={steps}"
    seconds = _seconds(trainer.get("max_time"))
    if seconds is not None and seconds < COMPILE_FROM_SECONDS:
        return f"trainer.max_time={trainer.get('max_time')}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(max_time: Any) -> float | None:
    """`trainer.max_time` in seconds: Lightning's "DD:HH:MM:SS" string or a dict of timedelta's arguments; None
    when there is no limit (or one Lightning will refuse itself)."""
    if isinstance(max_time, str):
        parts = max_time.split(":")
        if len(parts) == 4 and all(p.strip().isdigit() for p in parts):
            days, hours, minutes, seconds = (int(p) for p in parts)
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()
        return None
    if isinstance(max_time, Mapping):
        try:
            return timedelta(**{str(k): float(v) for k, v in max_time.items()}).total_seconds()
        except (TypeError, ValueError):
            return None
    return max_time.total_seconds() if isinstance(max_time, timedelta) else None


def resolve_speed(cfg: DictConfig, hardware: Hardware | None = None, training: bool = True) -> list[str]:
    """Replace the `auto` speed settings of `cfg` (see the module's table) by this machine's choices, log them in
    one line, and return the reasons for any choice that fell back. Without `training` (a test or an evaluation
    only) nothing is compiled: one pass over the test set does not repay the compilation."""
    trainer, data, model = cfg.get("trainer") or {}, cfg.get("data") or {}, cfg.get("model") or {}
    if AUTO not in (
        trainer.get("precision"),
        trainer.get("benchmark"),
        data.get("on_device"),
        data.get("drop_last"),
        model.get("channels_last"),
        model.get("compile"),
    ):
        return []
    hw = hardware or Hardware.for_accelerator(trainer.get("accelerator"), trainer.get("devices"))
    fallbacks: list[str] = []
    with open_dict(cfg):
        if trainer.get("precision") == AUTO:
            trainer.precision = ("bf16-mixed" if hw.bf16 else "16-mixed") if hw.cuda else "32-true"
        if trainer.get("benchmark") == AUTO:
            trainer.benchmark = True if hw.cuda and not trainer.get("deterministic") else None
        if data.get("on_device") == AUTO:
            policy = data.get("policy", "none")
            data.on_device = policy == "none"
            if policy != "none":
                stays = ", so the data stays on the CPU" if hw.gpu else ""
                fallbacks.append(f"data.policy={policy} runs in CPU loader workers{stays}")
        if model.get("channels_last") == AUTO:
            model.channels_last = hw.cuda
        if model.get("compile") == AUTO:
            short = too_short_to_compile(trainer, data.get("batch_size"))
            model.compile = training and hw.cuda and hw.triton and hw.dynamo and short is None
            if training and hw.cuda and not hw.dynamo:
                fallbacks.append(f"torch {torch.__version__} cannot compile on this Python: eager")
            elif training and hw.cuda and not hw.triton:
                fallbacks.append("torch.compile needs Triton, which is not installed: eager")
            elif training and hw.cuda and short is not None:
                fallbacks.append(f"{short} trains too little to repay compiling: eager")
        if data.get("drop_last") == AUTO:
            data.drop_last = bool(model.get("compile"))
    described = _describe(trainer, data, model, hw)
    log.info("Speed on %s: %s%s", hw.name, described, "".join(f"; {f}" for f in fallbacks))
    return fallbacks


def _describe(trainer: DictConfig, data: DictConfig, model: DictConfig, hw: Hardware) -> str:
    if not data.get("on_device"):
        where = "data from CPU loader workers"
    else:
        where = "data on the GPU" if hw.gpu else "data batched in the training process"
    parts = [str(trainer.get("precision")), where]
    parts.append("channels_last" if model.get("channels_last") else "NCHW")
    parts.append("torch.compile" if model.get("compile") else "eager")
    if trainer.get("benchmark"):
        parts.append("cuDNN autotuning")
    off = [
        "trainer.precision=32-true" if trainer.get("precision") != "32-true" else "",
        "trainer.benchmark=false" if trainer.get("benchmark") else "",
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
