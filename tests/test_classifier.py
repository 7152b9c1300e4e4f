from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.optimization import (
    LRFactor,
    OptimizerSettings,
    ScheduleSettings,
    build_optimizer,
    parameter_groups,
)
from wrncifar.models.wideresnet import WideResNet


def tiny_net(num_classes: int = 10) -> WideResNet:
    return WideResNet(num_classes=num_classes, widths=[4, 8, 8, 16])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_returns_a_differentiable_loss_and_updates_metrics() -> None:
    module = ImageClassifier(tiny_net(), label_smoothing=0.1)
    batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    loss = module.training_step(batch, 0)
    assert loss.ndim == 0 and loss.requires_grad
    loss.backward()
    assert module.train_acc.update_count == 1
    assert module.criterion.label_smoothing == 0.1


def test_fit_exposes_the_datamodule_class_names_to_the_module() -> None:
    dm = SyntheticCIFAR100DataModule(num_classes=10, train_per_class=6, test_per_class=2, val_per_class=2, batch_size=8)
    module = ImageClassifier(tiny_net(10))
    trainer = Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=dm)
    assert module.class_names == dm.classes and len(module.class_names) == 10


def test_best_validation_accuracy_survives_a_checkpoint_round_trip() -> None:
    module = ImageClassifier(tiny_net())
    module.val_acc_best.update(torch.tensor(0.7))
    restored = ImageClassifier(tiny_net())
    restored.load_state_dict(module.state_dict(), strict=True)
    restored.val_acc_best.update(torch.tensor(0.5))  # a worse epoch after resuming
    assert restored.val_acc_best.compute() == pytest.approx(0.7)


def test_hyperparameters_are_primitives_only() -> None:
    module = ImageClassifier(tiny_net(), optimizer={"lr": 0.05}, scheduler={"name": "multistep", "milestones": [1, 2]})
    hparams = dict(module.hparams)
    assert hparams["optimizer"]["lr"] == 0.05 and hparams["scheduler"]["milestones"] == (1, 2)
    assert "net" not in hparams
    primitives = (int, float, bool, str, type(None), tuple, list, dict)
    assert all(
        isinstance(v, primitives) for section in hparams.values() if isinstance(section, dict) for v in section.values()
    )


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
    factor = LRFactor(
        ScheduleSettings(name="cosine", warmup_epochs=1, min_lr_ratio=0.1), total_steps=110, steps_per_epoch=10
    )
    assert [factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(110) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 110))


def test_multistep_schedule_drops_by_gamma_at_each_milestone() -> None:
    factor = LRFactor(
        ScheduleSettings(name="multistep", milestones=(60, 120, 160), gamma=0.2), 2000, steps_per_epoch=10
    )
    assert [factor(s) for s in (599, 600, 1199, 1200, 1600)] == pytest.approx([1, 0.2, 0.2, 0.04, 0.008])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: OptimizerSettings(lr=0), "optimizer.lr must be > 0"),
        (lambda: OptimizerSettings(lr=-0.1), "optimizer.lr must be > 0"),
        (lambda: OptimizerSettings(weight_decay=-1), "weight_decay must be >= 0"),
        (lambda: ScheduleSettings(name="linear"), "scheduler.name must be"),
        (lambda: ImageClassifier(tiny_net(), label_smoothing=1.0), "label_smoothing must be in"),
        (lambda: ImageClassifier(nn.Linear(3, 3)), "num_classes is needed"),
    ],
)
def test_invalid_settings_fail_at_construction(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()
