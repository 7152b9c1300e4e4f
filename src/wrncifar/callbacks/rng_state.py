"""Every global random generator in the checkpoint, so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

from typing import Any

import numpy as np
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import Callback, LightningModule, Trainer


class RNGStateCheckpoint(Callback):
    """Saves the torch, CUDA, numpy and Python generators with each checkpoint and restores them just before
    the first step of a resumed run (not at load time: set-up between the two may draw random numbers).

    Dropout and anything else drawn from the global generators then continues as in the uninterrupted run; the
    on-device data loader keeps its own seed and position (`DeviceBatches.state_dict`).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=True)
        kind, keys, pos, has_gauss, cached = states["numpy"]
        # As plain lists: checkpoints load with weights_only=True, which refuses numpy arrays.
        states["numpy"] = [kind, keys.tolist(), pos, has_gauss, cached]
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is None:
            return
        states, self._pending = self._pending, None
        kind, keys, pos, has_gauss, cached = states["numpy"]
        states["numpy"] = (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        if not states.get("torch.cuda"):
            states.pop("torch.cuda", None)  # saved without CUDA: leave this process's CUDA generators alone
        _set_rng_states(states)
