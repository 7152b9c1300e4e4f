"""Stop on a NaN or infinite training loss, weight or BatchNorm statistic before it reaches a checkpoint, without a
host sync per step."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class NonFiniteLossError(RuntimeError):
    """The training loss, or the network's weights or buffers, became NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Records on the device whether a loss was non-finite, and reads that flag every `check_every_n_steps` steps
    and before every checkpoint save, where it also checks every parameter and buffer (a BatchNorm running variance
    can overflow while the loss is still finite): the run then stops with the step and learning rate, and the
    checkpoint about to be written (with broken weights) is not, so the last good one stays the newest.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad_step: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        step = trainer.global_step
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad_now = ~torch.isfinite(loss.detach())
        # First bad step, kept on the device: -1 while every loss was finite.
        self._first_bad_step = torch.where((self._first_bad_step < 0) & bad_now, step, self._first_bad_step)
        if step % self.check_every_n_steps == 0:
            self._raise_if_bad(trainer, pl_module)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self._raise_if_bad(trainer, pl_module)

    def _raise_if_bad(self, trainer: Trainer, pl_module: LightningModule) -> None:
        lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
        advice = (
            "stopped without saving the broken weights, the last checkpoint is the last good one. Lower "
            "model.optimizer.lr, add warm-up (model.scheduler.warmup_epochs) or train in 32-true precision"
        )
        step = int(self._first_bad_step.item()) if self._first_bad_step is not None else -1
        if step >= 0:
            raise NonFiniteLossError(
                f"the training loss became non-finite at step {step} (learning rate now "
                f"{lrs[0] if lrs else 'n/a'}); {advice}"
            )
        broken = _non_finite_tensors(pl_module)
        if broken:
            shown = ", ".join(broken[:5]) + (f", … ({len(broken)} in all)" if len(broken) > 5 else "")
            raise NonFiniteLossError(
                f"the network's weights or statistics became non-finite by step {trainer.global_step} ({shown}; "
                f"learning rate now {lrs[0] if lrs else 'n/a'}); {advice}"
            )


def _non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of `module` that hold a NaN or infinity; one host sync
    when all are finite."""
    tensors = [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]
    if not tensors or torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors]).all():
        return []
    return [name for name, t in tensors if not torch.isfinite(t.detach()).all()]
