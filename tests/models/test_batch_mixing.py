"""MixUp and CutMix batch transforms: what they do to images and labels, how often, that a seed fixes them, and
that a run using them resumes mid-epoch to the uninterrupted run's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn import functional

from tests.conftest import quiet_trainer
from wrncifar.callbacks.rng_state import RNGStateCheckpoint
from wrncifar.data.synthetic import SyntheticCIFAR100DataModule
from wrncifar.models.batch_mixing import MixingSettings, build_batch_mixing
from wrncifar.models.classifier import ImageClassifier
from wrncifar.models.wideresnet import WideResNet

CLASSES = 5


def batch(n: int = CLASSES, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen), torch.arange(n)  # distinct labels: every pair tells λ


def own_weight(labels: torch.Tensor, mixed_labels: torch.Tensor) -> torch.Tensor:
    """Each image's weight on its own label (its neighbour i - 1 gets the rest)."""
    own = functional.one_hot(labels, CLASSES).float()
    neighbour = own.roll(1, 0)
    weight = (mixed_labels * own).sum(1)
    torch.testing.assert_close(mixed_labels, weight[:, None] * own + (1 - weight[:, None]) * neighbour)
    return weight


def test_mixup_blends_each_image_with_its_neighbour_by_the_weight_of_its_label() -> None:
    images, labels = batch()
    torch.manual_seed(0)
    mixed, soft = build_batch_mixing(MixingSettings(mixup_alpha=0.4), CLASSES)(images.clone(), labels)
    lam = own_weight(labels, soft)
    assert torch.allclose(lam, lam[0]) and 0 <= lam[0] <= 1  # one λ for the whole batch
    torch.testing.assert_close(mixed, lam[0] * images + (1 - lam[0]) * images.roll(1, 0))


def test_mixup_weights_follow_beta_alpha_alpha() -> None:
    alpha, draws = 0.2, 2000
    mix = build_batch_mixing(MixingSettings(mixup_alpha=alpha), CLASSES)
    images, labels = batch(n=2, size=1)
    torch.manual_seed(0)
    lams = torch.stack([own_weight(labels, mix(images.clone(), labels)[1])[0] for _ in range(draws)])
    # Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1)); five standard errors of slack.
    variance = 1 / (4 * (2 * alpha + 1))
    assert abs(lams.mean().item() - 0.5) < 5 * (variance / draws) ** 0.5
    assert abs(lams.var().item() - variance) < 0.02


def test_cutmix_pastes_one_box_from_the_neighbour_and_weighs_labels_by_area() -> None:
    images, labels = batch(size=16)
    torch.manual_seed(3)
    mixed, soft = build_batch_mixing(MixingSettings(cutmix_alpha=1.0), CLASSES)(images.clone(), labels)
    pasted = (mixed != images).any(dim=1)  # n × h × w
    torch.testing.assert_close(mixed[:, :, pasted[0]], images.roll(1, 0)[:, :, pasted[0]])
    assert (pasted == pasted[0]).all()  # the same box in every image
    rows, cols = pasted[0].any(1).nonzero().flatten(), pasted[0].any(0).nonzero().flatten()
    assert pasted[0].sum() == len(rows) * len(cols)  # a rectangle
    own_share = 1 - pasted[0].float().mean()
    torch.testing.assert_close(own_weight(labels, soft), own_share.expand(len(labels)))


def test_with_both_each_batch_gets_one_of_them() -> None:
    mix = build_batch_mixing(MixingSettings(mixup_alpha=1.0, cutmix_alpha=1.0), CLASSES)
    images, labels = batch(size=16)
    kinds = set()
    torch.manual_seed(0)
    for _ in range(20):
        mixed, _ = mix(images.clone(), labels)
        changed = (mixed != images).any(dim=1)[0]
        kinds.add("mixup" if changed.all() else "cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_prob_leaves_that_share_of_batches_unmixed_with_one_hot_labels() -> None:
    mix = build_batch_mixing(MixingSettings(mixup_alpha=1.0, prob=0.25), CLASSES)
    images, labels = batch()
    torch.manual_seed(0)
    mixed_batches = 0
    for _ in range(400):
        out, soft = mix(images.clone(), labels)
        if torch.equal(out, images):
            assert torch.equal(soft, functional.one_hot(labels, CLASSES).float())
        else:
            mixed_batches += 1
    assert abs(mixed_batches / 400 - 0.25) < 4 * (0.25 * 0.75 / 400) ** 0.5


def test_the_global_seed_fixes_the_mixing_so_a_resumed_run_mixes_alike() -> None:
    mix = build_batch_mixing(MixingSettings(mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.8), CLASSES)
    images, labels = batch(size=16)

    def draws(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [mix(images.clone(), labels)[1] for _ in range(5)]

    assert all(torch.equal(a, b) for a, b in zip(draws(7), draws(7), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(draws(7), draws(8), strict=True))


def test_no_alpha_means_no_mixing() -> None:
    assert build_batch_mixing(MixingSettings(), CLASSES) is None
    assert build_batch_mixing(MixingSettings(mixup_alpha=0.2, prob=0.0), CLASSES) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mixup_alpha": -0.1}, "mixing.mixup_alpha must be >= 0"),
        ({"cutmix_alpha": -1}, "mixing.cutmix_alpha must be >= 0"),
        ({"prob": 1.5}, r"mixing.prob must be in \[0, 1\]"),
    ],
)
def test_invalid_settings_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MixingSettings(**kwargs)


def fit_with_mixing(callbacks: list, seed: int, max_steps: int = -1, ckpt_path: Path | None = None) -> ImageClassifier:
    seed_everything(seed, workers=True)
    dm = SyntheticCIFAR100DataModule(
        num_classes=10, train_per_class=10, val_per_class=2, test_per_class=1, on_device=True, batch_size=16
    )
    module = ImageClassifier(
        WideResNet(num_classes=10, widths=[4, 8, 8, 8], blocks_per_stage=1),
        mixing={"mixup_alpha": 0.4, "cutmix_alpha": 1.0, "prob": 0.8},
        scheduler={"name": "constant"},  # the same rates whatever max_steps says
    )
    trainer = quiet_trainer([RNGStateCheckpoint(), *callbacks], max_epochs=2, max_steps=max_steps, limit_val_batches=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    return module


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_a_run_with_mixing_resumed_mid_epoch_ends_with_the_uninterrupted_weights(tmp_path: Path) -> None:
    reference = fit_with_mixing([], seed=7)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=7)  # mid-way through the second epoch
    fit_with_mixing([checkpoint], seed=7, max_steps=7)
    # Another global seed: the generators the mixing draws from come back from the checkpoint.
    resumed = fit_with_mixing([], seed=8, ckpt_path=Path(checkpoint.best_model_path))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
