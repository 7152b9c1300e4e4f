from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from torch import nn

from wrncifar.models.optimization import (
    OptimizerSettings,
    ScheduleSettings,
    build_optimizer,
    build_scheduler,
    lr_factor,
    parameter_groups,
)
from wrncifar.models.wideresnet import WideResNet


def tiny_net() -> WideResNet:
    return WideResNet(num_classes=10, widths=[4, 8, 8, 16])


def test_norm_and_bias_parameters_can_be_exempt_from_weight_decay() -> None:
    net = tiny_net()
    decay, no_decay = parameter_groups(net, 5e-4, decay_norm_and_bias=False)
    bn_and_bias = {
        id(p)
        for m in net.modules()
        for n, p in m.named_parameters(recurse=False)
        if isinstance(m, nn.BatchNorm2d) or n == "bias"
    }
    assert {id(p) for p in no_decay["params"]} == bn_and_bias and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))
    assert all(p.ndim > 1 for p in decay["params"])
    (everything,) = parameter_groups(net, 5e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == len(list(net.parameters()))


def test_default_optimizer_is_nesterov_sgd_of_the_wrn_paper() -> None:
    optimizer = build_optimizer(tiny_net(), OptimizerSettings())
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, True, 5e-4)


def test_cosine_schedule_warms_up_linearly_then_decays_to_the_floor() -> None:
    settings = ScheduleSettings(name="cosine", warmup_epochs=1, min_lr_ratio=0.1)

    def factor(step: int) -> float:
        return lr_factor(step, settings, total_steps=110, steps_per_epoch=10)

    assert [factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(110) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 110))


def test_multistep_schedule_drops_by_gamma_at_each_milestone() -> None:
    settings = ScheduleSettings(name="multistep", milestones=(60, 120, 160), gamma=0.2)
    factors = [lr_factor(s, settings, total_steps=2000, steps_per_epoch=10) for s in (599, 600, 1199, 1200, 1600)]
    assert factors == pytest.approx([1, 0.2, 0.2, 0.04, 0.008])


def stepped(scheduler, optimizer, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def saved_and_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)  # what a checkpoint holds: numbers only, loadable with weights_only=True
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_cosine_run_trained_for_longer_decays_from_the_lr_it_had_reached() -> None:
    settings = ScheduleSettings(name="cosine")
    optimizer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    scheduler = build_scheduler(optimizer, settings, total_steps=100, steps_per_epoch=10)
    assert stepped(scheduler, optimizer, 50)[-1] == pytest.approx(0.05)  # half-way down a 10-epoch cosine

    longer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    resumed = build_scheduler(longer, settings, total_steps=200, steps_per_epoch=10)  # trainer.max_epochs=20
    resumed.load_state_dict(saved_and_loaded(scheduler.state_dict()))
    assert resumed.last_epoch == 50 and longer.param_groups[0]["lr"] == pytest.approx(0.05)
    lrs = stepped(resumed, longer, 150)
    # From 0.05 at epoch 5 down a cosine to 0 at epoch 20: never back up, as the plain 20-epoch curve would (0.085).
    assert lrs[0] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 0.1 / 15)))
    assert lrs[74] == pytest.approx(0.025) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs))

    again = build_scheduler(build_optimizer(tiny_net(), OptimizerSettings(lr=0.1)), settings, 200, 10)
    again.load_state_dict(saved_and_loaded(resumed.state_dict()))  # a second resume keeps the lengthened curve
    assert again.get_last_lr()[0] == pytest.approx(lrs[-1], abs=1e-12)


def test_a_finished_cosine_run_trained_for_longer_stays_at_its_floor_and_says_so(caplog) -> None:
    settings = ScheduleSettings(name="cosine", min_lr_ratio=0.01)
    optimizer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    scheduler = build_scheduler(optimizer, settings, total_steps=100, steps_per_epoch=10)
    stepped(scheduler, optimizer, 100)
    longer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    resumed = build_scheduler(longer, settings, total_steps=150, steps_per_epoch=10)
    with caplog.at_level("WARNING"):
        resumed.load_state_dict(saved_and_loaded(scheduler.state_dict()))
    assert stepped(resumed, longer, 50) == pytest.approx([0.001] * 50)
    assert "it had reached its floor" in caplog.text and "init_from=<checkpoint>" in caplog.text


def test_a_multistep_run_trained_for_longer_keeps_its_milestones() -> None:
    settings = ScheduleSettings(name="multistep", milestones=(6,), gamma=0.1)
    optimizer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    scheduler = build_scheduler(optimizer, settings, total_steps=80, steps_per_epoch=10)
    stepped(scheduler, optimizer, 80)
    longer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    resumed = build_scheduler(longer, settings, total_steps=120, steps_per_epoch=10)
    resumed.load_state_dict(saved_and_loaded(scheduler.state_dict()))
    assert resumed.anchor is None and stepped(resumed, longer, 5) == pytest.approx([0.01] * 5)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OptimizerSettings(lr=0), "optimizer.lr must be > 0"),
        (lambda: OptimizerSettings(lr=-0.1), "optimizer.lr must be > 0"),
        (lambda: OptimizerSettings(momentum=1.0), "optimizer.momentum must be in"),
        (lambda: OptimizerSettings(weight_decay=-1), "weight_decay must be >= 0"),
        (lambda: OptimizerSettings(momentum=0.0), "nesterov needs momentum"),
        (lambda: ScheduleSettings(name="linear"), "scheduler.name must be"),
        (lambda: ScheduleSettings(warmup_epochs=-1), "warmup_epochs must be >= 0"),
        (lambda: ScheduleSettings(min_lr_ratio=2), "min_lr_ratio must be in"),
    ],
)
def test_invalid_settings_fail_at_construction(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_onecycle_rises_linearly_over_the_warmup_then_falls_linearly_to_the_floor() -> None:
    settings = ScheduleSettings(name="onecycle", warmup_epochs=2, min_lr_ratio=0.1)

    def factor(step: int) -> float:
        return lr_factor(step, settings, total_steps=100, steps_per_epoch=10)

    assert [factor(s) for s in (0, 9, 19)] == pytest.approx([0.05, 0.5, 1.0])
    assert factor(20) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(1.0 - 0.9 * 0.5)
    assert factor(100) == pytest.approx(0.1)
    falls = [factor(s) - factor(s + 1) for s in range(20, 100)]
    assert falls == pytest.approx([0.9 / 80] * 80)  # a straight line


def test_a_schedule_resumed_with_other_steps_per_epoch_keeps_its_epochs() -> None:
    """Trained 5 epochs of 10 steps, resumed at half the steps per epoch (a doubled batch): the drop at epoch 6
    comes after one more epoch of the new length, 5 steps, not after 10."""
    settings = ScheduleSettings(name="multistep", milestones=(6, 8), gamma=0.1)
    optimizer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    scheduler = build_scheduler(optimizer, settings, total_steps=100, steps_per_epoch=10)
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)

    doubled = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    resumed = build_scheduler(doubled, settings, total_steps=50, steps_per_epoch=5)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    lrs = []
    for _ in range(16):
        doubled.step()
        resumed.step()
        lrs.append(doubled.param_groups[0]["lr"])
    assert lrs[:4] == pytest.approx([0.1] * 4)  # epoch 5.2 … 5.8
    assert lrs[4:14] == pytest.approx([0.01] * 10)  # epoch 6.0 … 7.8
    assert lrs[14:] == pytest.approx([0.001] * 2)  # epoch 8.0, 8.2


def test_a_resumed_schedule_takes_the_base_lr_of_the_current_config() -> None:
    settings = ScheduleSettings(name="constant")
    optimizer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    scheduler = build_scheduler(optimizer, settings, total_steps=100, steps_per_epoch=10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    # As Lightning resumes: both built from the current config, then the optimizer's state restored (with the
    # saved lr 0.1), then the scheduler's.
    lower = build_optimizer(tiny_net(), OptimizerSettings(lr=0.05))
    resumed = build_scheduler(lower, settings, total_steps=100, steps_per_epoch=10)
    lower.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(scheduler.state_dict())
    assert lower.param_groups[0]["lr"] == resumed.get_last_lr()[0] == pytest.approx(0.05)


def resumed_after(
    settings: ScheduleSettings, steps: int, before: tuple[float, float], after: tuple[float, float], max_steps: int
):
    """A schedule stepped `steps` times with (epoch limit in steps, steps per epoch) `before`, saved, and loaded
    into one built with `after`, both with `max_steps`: the optimizer and the resumed schedule."""
    optimizer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    scheduler = build_scheduler(optimizer, settings, *before, max_steps=max_steps)
    stepped(scheduler, optimizer, steps)
    resumed_optimizer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
    resumed = build_scheduler(resumed_optimizer, settings, *after, max_steps=max_steps)
    resumed.load_state_dict(saved_and_loaded(scheduler.state_dict()))
    return resumed_optimizer, resumed


@pytest.mark.parametrize("steps_per_epoch", [5, 20])
def test_a_run_ended_by_max_steps_and_resumed_with_other_steps_per_epoch_reaches_its_floor_at_max_steps(
    steps_per_epoch: int, caplog
) -> None:
    """50 of trainer.max_steps=100 at 10 steps per epoch (epoch 5), then 50 more at another size: the schedule
    ends with them, at epoch 5 + 50 / steps_per_epoch, not at 100 / steps_per_epoch."""
    settings = ScheduleSettings(name="cosine")
    with caplog.at_level("WARNING"):
        optimizer, resumed = resumed_after(settings, 50, (200 * 10, 10), (200 * steps_per_epoch, steps_per_epoch), 100)
    assert resumed.total_epochs == pytest.approx(5 + 50 / steps_per_epoch)
    lrs = stepped(resumed, optimizer, 50)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and min(lrs[:-1]) > 0
    assert all(a > b for a, b in itertools.pairwise([0.05, *lrs]))
    assert f"where trainer.max_steps=100 ends the run, 50 steps after step 50 at {steps_per_epoch} steps" in caplog.text


def test_a_run_ended_by_max_steps_and_resumed_at_the_same_size_keeps_its_curve(caplog) -> None:
    settings = ScheduleSettings(name="onecycle", warmup_epochs=1)
    with caplog.at_level("WARNING"):
        optimizer, resumed = resumed_after(settings, 50, (200 * 10, 10), (200 * 10, 10), 100)
    assert resumed.anchor is None and not caplog.text
    lrs = stepped(resumed, optimizer, 50)
    assert lrs == pytest.approx([0.1 * lr_factor(s, settings, 100, 10) for s in range(51, 101)])


def test_a_run_resumed_so_that_its_epoch_limit_comes_before_max_steps_ends_there(caplog) -> None:
    """trainer.max_epochs=12 and max_steps=100: at 10 steps per epoch the steps end it at epoch 10; resumed at epoch
    5 with 5 steps per epoch, epoch 12 comes 35 steps later, before step 100."""
    settings = ScheduleSettings(name="cosine")
    with caplog.at_level("WARNING"):
        optimizer, resumed = resumed_after(settings, 50, (12 * 10, 10), (12 * 5, 5), 100)
    assert resumed.total_epochs == pytest.approx(12)
    assert stepped(resumed, optimizer, 35)[-1] == pytest.approx(0.0, abs=1e-12)
    assert "now ends at epoch 12 instead of 10 (trainer.max_epochs)" in caplog.text


def test_a_schedule_that_needs_no_end_runs_without_one() -> None:
    for name in ("constant", "multistep"):
        optimizer = build_optimizer(tiny_net(), OptimizerSettings(lr=0.1))
        scheduler = build_scheduler(optimizer, ScheduleSettings(name=name, milestones=(1,)), math.inf, 10)
        lrs = stepped(scheduler, optimizer, 12)
        resumed = build_scheduler(
            build_optimizer(tiny_net(), OptimizerSettings(lr=0.1)), scheduler.settings, math.inf, 10
        )
        resumed.load_state_dict(saved_and_loaded(scheduler.state_dict()))
        assert resumed.get_last_lr() == pytest.approx([lrs[-1]]) and resumed.anchor is None
    with pytest.raises(ValueError, match=r"set trainer\.max_epochs or trainer\.max_steps"):
        build_scheduler(build_optimizer(tiny_net(), OptimizerSettings()), ScheduleSettings(name="cosine"), math.inf, 10)
