"""Optimizer and learning-rate schedule settings, and the objects they build."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimizerSettings:
    """SGD with momentum, the WRN paper's optimizer.

    `decay_norm_and_bias=False` exempts BatchNorm weights and all biases from weight decay: they set scales
    and offsets, not capacity, and decaying them mostly fights BatchNorm.
    """

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = True

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"optimizer.momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("optimizer.nesterov needs momentum > 0")


Schedule = Literal["cosine", "multistep", "constant", "onecycle"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
# Those that reach their floor when training ends: they need an end in epochs or steps (a time limit gives none).
SCHEDULES_NEEDING_AN_END: tuple[str, ...] = ("cosine", "onecycle")


@dataclass(frozen=True)
class ScheduleSettings:
    """Learning-rate schedule, stepped every optimizer step.

    `cosine`: linear warmup over `warmup_epochs`, then cosine decay to `min_lr_ratio`·lr when training ends.
    `multistep`: linear warmup, then ×`gamma` at each epoch in `milestones` (the WRN paper: ×0.2 at 60/120/160).
    `constant`: linear warmup, then constant.
    `onecycle`: linear rise to lr over `warmup_epochs`, then linear fall to `min_lr_ratio`·lr when training ends:
    the piecewise-linear one-cycle of fast CIFAR training (Smith & Topin 2017; Page's DAWNBench ResNet), which
    spends every step of a short budget either speeding up or annealing.

    Each step trains at the lr of the steps done before it (`lr_factor`), so the floor is the lr after the last
    step: the last step itself runs one step's decay above it.
    """

    name: Schedule = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    milestones: tuple[int, ...] = field(default=(60, 120, 160))
    gamma: float = 0.2

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"scheduler.name must be one of {', '.join(SCHEDULES)}, got {self.name!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"scheduler.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"scheduler.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        object.__setattr__(self, "milestones", tuple(self.milestones))


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Split parameters so that, when asked, biases and normalisation weights get no weight decay."""
    if decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm)
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                (no_decay if is_norm or name == "bias" else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, settings: OptimizerSettings) -> torch.optim.SGD:
    """SGD over `model`'s parameters as `settings` asks."""
    groups = parameter_groups(model, settings.weight_decay, settings.decay_norm_and_bias)
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, nesterov=settings.nesterov)


def lr_factor(step: int, settings: ScheduleSettings, total_steps: float, steps_per_epoch: float) -> float:
    """The multiplier of the base learning rate after `step` optimizer steps (`total_steps`: math.inf for no end,
    which only the schedules outside `SCHEDULES_NEEDING_AN_END` take)."""
    warmup_steps = round(settings.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if settings.name == "multistep":
        return settings.gamma ** sum(step >= round(m * steps_per_epoch) for m in settings.milestones)
    if settings.name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if settings.name == "onecycle":
        return 1.0 - (1 - settings.min_lr_ratio) * progress
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EpochSchedule(LRScheduler):
    """Sets every group's lr to its base lr × `lr_factor` at the schedule's position, stepped every optimizer step.

    The position is kept in epochs (fractional): each step advances it by 1 / `steps_per_epoch` of the current
    config. A run resumed with another number of steps per epoch (batch size, `drop_last`, device count) therefore
    keeps the schedule where it was in epochs — a milestone at epoch 60 stays at epoch 60 — and the current config
    gives the length (`total_steps`) and the base lr: only the position is saved (`state_dict` holds numbers
    only).

    The schedule ends where training does: at epoch `total_steps / steps_per_epoch` (the epoch limit), or after
    `max_steps` optimizer steps in all (`trainer.max_steps`), whichever comes first. Steps taken before a resume
    count at the size they had: resumed with other steps per epoch, a run limited by `max_steps` ends
    `(max_steps - steps taken) / steps_per_epoch` epochs after the epoch it had reached, and the schedule with it.

    Resumed with another end (`trainer.max_epochs`, or `trainer.max_steps` reached at another number of steps per
    epoch), a schedule whose curve depends on the length (`cosine`, `onecycle`) continues from the lr it had
    reached and decays to its floor at the new end, with its own shape (the `anchor`): the lr never jumps back up.
    `multistep` and `constant` do not depend on the length, and need no end (`total_steps=math.inf`,
    `max_steps=None`: a run limited by time alone).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        settings: ScheduleSettings,
        total_steps: float,
        steps_per_epoch: float,
        max_steps: int | None = None,
    ) -> None:
        self.settings = settings
        self.epoch_limit = total_steps / steps_per_epoch
        self.max_steps = max_steps
        self.steps_per_epoch = steps_per_epoch
        self.epochs_done = 0.0
        self.total_epochs = self._end(steps_done=0)
        if not math.isfinite(self.total_epochs) and settings.name in SCHEDULES_NEEDING_AN_END:
            raise ValueError(
                f"the {settings.name} schedule decays to its floor when training ends, but no epoch or step limit "
                "ends this run (trainer.max_epochs=-1 and trainer.max_steps=-1; trainer.max_time gives no end a "
                "schedule can foresee): set trainer.max_epochs or trainer.max_steps, or use a schedule that needs "
                "no end (model.scheduler.name=constant or multistep)"
            )
        # (epoch, lr factor) from which a lengthened schedule decays to its floor; None: the plain curve.
        self.anchor: tuple[float, float] | None = None
        super().__init__(optimizer)

    def step(self, epoch: None = None) -> None:
        if self.last_epoch >= 0:  # the constructor's own first call sets the initial lr; it trains nothing
            self.epochs_done += 1.0 / self.steps_per_epoch
        super().step()

    def get_lr(self) -> list[float]:
        return self._lrs()

    def _end(self, steps_done: int) -> float:
        """The epoch at which training ends, `steps_done` optimizer steps in (at `epochs_done`); math.inf: none."""
        if self.max_steps is None:
            return self.epoch_limit
        return min(self.epoch_limit, self.epochs_done + (self.max_steps - steps_done) / self.steps_per_epoch)

    def _lrs(self) -> list[float]:
        factor = self._factor(self.total_epochs, self.anchor)
        return [base * factor for base in self.base_lrs]

    def _factor(self, total_epochs: float, anchor: tuple[float, float] | None) -> float:
        """The lr factor at the current position of a schedule `total_epochs` long, decaying from `anchor` if any."""
        if anchor is not None and self.epochs_done >= anchor[0]:
            start, start_factor = anchor
            progress = min(1.0, (self.epochs_done - start) / max(total_epochs - start, 1e-12))
            shape = 0.5 * (1 + math.cos(math.pi * progress)) if self.settings.name == "cosine" else 1 - progress
            floor = self.settings.min_lr_ratio
            return floor + (start_factor - floor) * shape
        step = round(self.epochs_done * self.steps_per_epoch)  # in steps of the current config
        total_steps = total_epochs * self.steps_per_epoch
        total_steps = round(total_steps) if math.isfinite(total_steps) else total_steps
        return lr_factor(step, self.settings, total_steps, self.steps_per_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs_done": self.epochs_done,
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "total_epochs": self.total_epochs,
            "anchor": list(self.anchor) if self.anchor else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position; keep this config's base lrs, and set the optimizer's lr (whose restored state holds
        the lr of the run that saved it) to the lr at the position. Accepts the step-only state of a LambdaLR."""
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        self.epochs_done = float(state_dict.get("epochs_done", self.last_epoch / self.steps_per_epoch))
        saved_anchor = state_dict.get("anchor")
        self.anchor = (float(saved_anchor[0]), float(saved_anchor[1])) if saved_anchor else None
        self.total_epochs = self._end(steps_done=self.last_epoch)  # last_epoch: the optimizer steps taken
        saved_total = state_dict.get("total_epochs")
        lengthened = saved_total is not None and not math.isclose(float(saved_total), self.total_epochs)
        if (
            lengthened
            and self.settings.name in ("cosine", "onecycle")
            and self.epochs_done >= self.settings.warmup_epochs
        ):
            reached = self._factor(float(saved_total), self.anchor)
            self.anchor = (self.epochs_done, reached)
            by_steps = self.max_steps is not None and self.total_epochs < self.epoch_limit
            log.warning(
                "The %s schedule now ends at epoch %g instead of %g (%s): from epoch %.4g it decays from the lr factor "
                "it had reached, %.4g, to its floor, %g%s",
                self.settings.name,
                self.total_epochs,
                float(saved_total),
                f"where trainer.max_steps={self.max_steps} ends the run, {self.max_steps - self.last_epoch} steps "
                f"after step {self.last_epoch} at {self.steps_per_epoch:g} steps per epoch"
                if by_steps
                else "trainer.max_epochs",
                self.epochs_done,
                reached,
                self.settings.min_lr_ratio,
                "; it had reached its floor, so training longer runs at that lr (a new run with init_from=<checkpoint> "
                "gets a fresh schedule)"
                if math.isclose(reached, self.settings.min_lr_ratio)
                else "",
            )
        for group, base, lr in zip(self.optimizer.param_groups, self.base_lrs, self._lrs(), strict=True):
            group["initial_lr"], group["lr"] = base, lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    settings: ScheduleSettings,
    total_steps: float,
    steps_per_epoch: float,
    max_steps: int | None = None,
) -> EpochSchedule:
    """The per-step schedule `settings` asks for, over `total_steps` steps of `steps_per_epoch` each (the epoch
    limit; math.inf: none) or `max_steps` optimizer steps in all, resumed ones included, if that comes first."""
    return EpochSchedule(optimizer, settings, total_steps, steps_per_epoch, max_steps)
