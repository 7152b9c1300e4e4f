"""The EMA of the weights (`callbacks=ema`, Lightning's EMAWeightAveraging): its values against an EMA computed by
hand, validation with the averaged weights, the checkpoint's contents, and a mid-epoch resume that continues it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from tests.conftest import quiet_trainer
from wrncifar.callbacks.ema import ExponentialMovingAverage
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet
from wrncifar.run.fit_and_test import instantiate_group

DECAY = 0.8  # small, so that a few steps move the average well away from the raw weights
EPOCHS = 2
STEPS_PER_EPOCH = 5  # 10 classes × (10 - 2 validation) images / 16 per batch
INTERRUPTED_AT = STEPS_PER_EPOCH + 2

# The resumed run needs no checkpoint callback of its own; Lightning warns that it lacks the one that saved.
pytestmark = pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")


def float_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's floating-point parameters and buffers (BatchNorm statistics included), copied."""
    return {
        k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith("net.") and v.is_floating_point()
    }


class RecordWeights(Callback):
    """The raw weights after each training step, and the weights the module holds while it validates."""

    def __init__(self) -> None:
        self.after_step: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []
        self.tested: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: object) -> None:
        self.after_step.append(float_state(pl_module))

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.validated.append(float_state(pl_module))

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.tested.append(float_state(pl_module))


def fit(
    callbacks: list[Callback], ckpt_path: Path | None = None, max_steps: int = -1, validate: bool = True
) -> tuple[Trainer, ImageClassifier]:
    seed_everything(7, workers=True)
    net = WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1, dropout=0.0)
    dm = SyntheticCIFAR100DataModule(
        num_classes=10, train_per_class=10, val_per_class=2, test_per_class=1, on_device=True, batch_size=16
    )
    trainer = quiet_trainer(
        callbacks,
        max_epochs=EPOCHS,
        max_steps=max_steps,
        num_sanity_val_steps=0,
        limit_val_batches=1 if validate else 0,
    )
    module = ImageClassifier(net, scheduler={"name": "constant"})  # the same rates whatever max_steps says
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return trainer, module


def manual_ema(steps: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The first update copies the weights; each later one moves the average (1 - DECAY) of the way to them."""
    average = dict(steps[0])
    for weights in steps[1:]:
        average = {k: DECAY * average[k] + (1 - DECAY) * weights[k] for k in average}
    return average


def assert_close_states(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], msg=lambda m, key=key: f"{key}: {m}")


def test_ema_follows_a_hand_computed_average_and_validation_uses_it() -> None:
    recorder = RecordWeights()
    _, module = fit([ExponentialMovingAverage(decay=DECAY), recorder])
    assert len(recorder.after_step) == EPOCHS * STEPS_PER_EPOCH and len(recorder.validated) == EPOCHS
    for epoch, validated in enumerate(recorder.validated):
        expected = manual_ema(recorder.after_step[: (epoch + 1) * STEPS_PER_EPOCH])
        assert_close_states(validated, expected)
        assert any(not torch.allclose(validated[k], recorder.after_step[-1][k]) for k in validated)
    # Training resumes from the raw weights after each validation, and ends holding the average.
    assert_close_states(float_state(module), manual_ema(recorder.after_step))


def test_checkpoint_holds_the_average_as_its_weights_and_resumes_both_mid_epoch(tmp_path: Path) -> None:
    uninterrupted = RecordWeights()
    ema = ExponentialMovingAverage(decay=DECAY)
    _, reference = fit([ema, uninterrupted], validate=False)

    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=INTERRUPTED_AT)
    before = RecordWeights()
    fit([ExponentialMovingAverage(decay=DECAY), before, checkpoint], max_steps=INTERRUPTED_AT, validate=False)
    saved = torch.load(checkpoint.best_model_path, weights_only=True, map_location="cpu")
    # `state_dict` is the average (what testing and eval.py load); the raw weights travel beside it.
    assert_close_states(net_state(saved["state_dict"]), manual_ema(uninterrupted.after_step[:INTERRUPTED_AT]))
    assert_close_states(net_state(saved["current_model_state"]), uninterrupted.after_step[INTERRUPTED_AT - 1])
    assert int(saved["averaging_state"]["n_averaged"]) == INTERRUPTED_AT

    after = RecordWeights()
    resumed_ema = ExponentialMovingAverage(decay=DECAY)
    _, resumed = fit([resumed_ema, after], ckpt_path=Path(checkpoint.best_model_path), validate=False)
    # The resumed run trains on from the raw weights and ends with the uninterrupted run's average.
    assert len(after.after_step) == EPOCHS * STEPS_PER_EPOCH - INTERRUPTED_AT
    for got, want in zip(after.after_step, uninterrupted.after_step[INTERRUPTED_AT:], strict=True):
        assert_close_states(got, want)
    assert_close_states(float_state(resumed), float_state(reference))
    assert_close_states(float_state(resumed_ema._average_model.module), float_state(ema._average_model.module))


def net_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("net.") and v.is_floating_point()}


def test_testing_the_best_checkpoint_right_after_fit_evaluates_the_average(tmp_path: Path) -> None:
    recorder = RecordWeights()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    trainer, module = fit([ExponentialMovingAverage(decay=DECAY), recorder, checkpoint])
    trainer.test(module, datamodule=trainer.datamodule, ckpt_path=checkpoint.best_model_path, weights_only=True)
    saved = torch.load(checkpoint.best_model_path, weights_only=True, map_location="cpu")
    (tested,) = recorder.tested
    assert_close_states(tested, net_state(saved["state_dict"]))
    raw = net_state(saved["current_model_state"])
    assert any(not torch.allclose(tested[k], raw[k]) for k in raw)


def test_checkpoint_keeps_the_modules_own_best_validation_accuracy(tmp_path: Path) -> None:
    """Only the network is averaged: `val_acc_best` in the checkpoint's `state_dict` (what eval.py and a resume
    without the callback read) is the one the run reached, not the -inf frozen in the average's copy."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    _, module = fit([ExponentialMovingAverage(decay=DECAY), checkpoint])
    saved = torch.load(checkpoint.last_model_path, weights_only=True, map_location="cpu")
    best = saved["state_dict"]["val_acc_best.max_value"]
    assert torch.isfinite(best) and best == module.val_acc_best.compute()
    assert best == saved["current_model_state"]["val_acc_best.max_value"]
    assert saved["state_dict"].keys() == saved["current_model_state"].keys()


def test_the_average_is_made_on_the_device_the_model_will_train_on() -> None:
    """Callbacks are set up before the strategy moves the model: the average goes to the strategy's device (on a
    GPU, not the CPU the model was built on), unless the callback was given one."""
    module = ImageClassifier(WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1))
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")))  # no GPU needed
    ema = ExponentialMovingAverage()
    ema.setup(trainer, module, "fit")
    assert {p.device.type for p in ema._average_model.parameters()} == {"meta"}
    assert {p.device.type for p in module.parameters()} == {"cpu"}, "the model itself is the strategy's to move"
    given = ExponentialMovingAverage(device="cpu")
    given.setup(trainer, module, "fit")
    assert {p.device.type for p in given._average_model.parameters()} == {"cpu"}


def test_callbacks_ema_adds_the_ema_to_the_default_callbacks(make_config) -> None:
    cfg = make_config(["callbacks=ema"])
    callbacks = instantiate_group(cfg.callbacks)
    (ema,) = [c for c in callbacks if isinstance(c, ExponentialMovingAverage)]
    assert len(callbacks) > 1 and ema.update_every_n_steps == 1
    assert instantiate(cfg.callbacks.ema)._kwargs["avg_fn"] is not None
