from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from tests.conftest import quiet_trainer
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.classifier import ImageClassifier
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


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_the_epochs_training_loss_weighs_every_image_alike_with_a_smaller_last_batch() -> None:
    """`data.drop_last=false` (the default) ends an epoch with a smaller batch: its images count as many as theirs."""
    torch.manual_seed(0)
    module = ImageClassifier(tiny_net(), label_smoothing=0.1)
    batches = [(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))) for n in (6, 2)]
    losses = [float(module.training_step(batch, i)) for i, batch in enumerate(batches)]
    per_image = (6 * losses[0] + 2 * losses[1]) / 8
    assert float(module.train_loss.compute()) == pytest.approx(per_image, rel=1e-5)
    assert per_image != pytest.approx(sum(losses) / 2, rel=1e-3), "the batches' losses differ"


def test_fit_exposes_the_datamodule_class_names_to_the_module() -> None:
    dm = SyntheticCIFAR100DataModule(num_classes=10, train_per_class=6, test_per_class=2, val_per_class=2, batch_size=8)
    module = ImageClassifier(tiny_net(10))
    trainer = Trainer(accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False)
    trainer.fit(module, datamodule=dm)
    assert module.class_names == dm.classes and len(module.class_names) == 10


class LearningRates(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: Trainer, *args) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("max_epochs", [200, -1])
def test_the_schedules_epochs_are_the_loaders_when_max_steps_ends_the_run_first(max_epochs: int) -> None:
    """A milestone at epoch 1 falls after one epoch of batches, however far `max_epochs` is (or without it)."""
    dm = SyntheticCIFAR100DataModule(num_classes=10, train_per_class=6, test_per_class=2, val_per_class=2, batch_size=8)
    scheduler = {"name": "multistep", "milestones": [1], "gamma": 0.5}
    lrs = LearningRates()
    trainer = quiet_trainer([lrs], max_epochs=max_epochs, max_steps=10, limit_val_batches=0)
    trainer.fit(ImageClassifier(tiny_net(), scheduler=scheduler), datamodule=dm)
    batches = trainer.num_training_batches
    assert batches < 10 and len(lrs.lrs) == 10
    assert lrs.lrs == [0.1] * batches + [0.05] * (10 - batches)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_evaluation_loss_is_plain_cross_entropy_whatever_the_training_smoothing() -> None:
    """val/ and test/loss compare runs trained with any `label_smoothing` (a search dimension of the Optuna sweep)."""
    net = tiny_net()
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6)
    losses = []
    for smoothing in (0.0, 0.2):
        module = ImageClassifier(net, label_smoothing=smoothing).eval()
        with torch.no_grad():
            module.validation_step((images, labels), 0)
        losses.append(module.val_loss.compute())
    with torch.no_grad():
        plain = nn.functional.cross_entropy(net.eval()(images), labels)
    torch.testing.assert_close(losses[0], plain)
    torch.testing.assert_close(losses[1], plain)


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


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ImageClassifier(tiny_net(), optimizer={"lr": 0}), "optimizer.lr must be > 0"),
        (lambda: ImageClassifier(tiny_net(), scheduler={"name": "linear"}), "scheduler.name must be"),
        (lambda: ImageClassifier(tiny_net(), label_smoothing=1.0), "label_smoothing must be in"),
        (lambda: ImageClassifier(nn.Linear(3, 3)), "num_classes is needed"),
    ],
)
def test_invalid_settings_fail_at_construction(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("mixing", [{"mixup_alpha": 0.4}, {"cutmix_alpha": 1.0}])
def test_mixed_batches_train_on_smoothed_soft_targets_and_score_the_dominant_class(mixing: dict) -> None:
    smoothing, classes = 0.1, 10
    module = ImageClassifier(WideResNet(num_classes=classes, widths=[4, 8, 8, 16], dropout=0.0), mixing=mixing,
                             label_smoothing=smoothing)  # fmt: skip
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8)
    torch.manual_seed(5)
    loss = module.training_step((images.clone(), labels), 0)

    # The same draw by hand: the mixed batch, its label distributions, smoothed, against the log-probabilities.
    torch.manual_seed(5)
    mixed, targets = module.batch_mixing(images.clone(), labels)
    assert targets.shape == (8, classes) and not torch.equal(targets, nn.functional.one_hot(labels, classes).float())
    logits = module.net(mixed)
    smoothed = targets * (1 - smoothing) + smoothing / classes
    expected = -(smoothed * logits.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)
    dominant = (logits.argmax(1) == targets.argmax(1)).float().mean()
    torch.testing.assert_close(module.train_acc.compute(), dominant)


def test_mixing_settings_are_saved_as_hyperparameters_and_leave_the_state_dict_alone() -> None:
    plain = ImageClassifier(tiny_net())
    mixed = ImageClassifier(tiny_net(), mixing={"mixup_alpha": 0.2, "cutmix_alpha": 1.0})
    assert mixed.hparams["mixing"] == {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "prob": 1.0}
    assert plain.batch_mixing is None and list(mixed.state_dict()) == list(plain.state_dict())
    with pytest.raises(ValueError, match=r"mixing\.prob must be in"):
        ImageClassifier(tiny_net(), mixing={"mixup_alpha": 0.2, "prob": 2})


class BatchLosses(Callback):
    """Each training batch's mean loss and size, and at the end of each epoch its logged train/loss and the
    number of images train/acc counted."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float, int]] = []  # (epoch, loss, images)
        self.epochs: dict[int, tuple[float, int]] = {}

    def on_train_batch_end(self, trainer: Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.batches.append((trainer.current_epoch, float(outputs["loss"]), len(batch[1])))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: ImageClassifier) -> None:
        counted = int(pl_module.train_acc.tp.sum() + pl_module.train_acc.fn.sum())  # micro accuracy: every image
        self.epochs[trainer.current_epoch] = (float(trainer.callback_metrics["train/loss"]), counted)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_an_epoch_resumed_in_its_middle_logs_the_training_metrics_of_the_whole_epoch(tmp_path) -> None:
    """A step (or signal) checkpoint mid-epoch: the resumed run's train/loss and train/acc of that epoch count the
    steps before the checkpoint too, as an uninterrupted run's do."""

    def fit(callbacks: list[Callback], ckpt_path=None, max_steps: int = -1) -> None:
        torch.manual_seed(0)
        data = SyntheticCIFAR100DataModule(
            num_classes=10, train_per_class=10, val_per_class=2, test_per_class=1, on_device=True, batch_size=16
        )  # 80 training images: 5 steps per epoch
        trainer = quiet_trainer(callbacks, max_epochs=2, max_steps=max_steps, limit_val_batches=0)
        trainer.fit(ImageClassifier(tiny_net()), datamodule=data, ckpt_path=ckpt_path, weights_only=True)

    before, after = BatchLosses(), BatchLosses()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=7)  # the second epoch's second step
    fit([before, checkpoint], max_steps=7)
    fit([after], ckpt_path=checkpoint.best_model_path)
    epoch = [(loss, n) for e, loss, n in before.batches + after.batches if e == 1]
    assert [n for _, n in epoch] == [16] * 5
    logged, counted = after.epochs[1]
    assert logged == pytest.approx(sum(loss * n for loss, n in epoch) / 80, rel=1e-5)
    assert counted == 80
