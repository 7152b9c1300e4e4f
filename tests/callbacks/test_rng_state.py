"""RNGStateCheckpoint restores what this machine has: the resumed run's GPUs, not the saving run's."""

from __future__ import annotations

import pytest
import torch

from wrncifar.callbacks import rng_state
from wrncifar.callbacks.rng_state import RNGStateCheckpoint


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What the callback hands Lightning's `_set_rng_states`, which sets every generator it is given."""
    calls: list[dict] = []
    monkeypatch.setattr(rng_state, "_set_rng_states", lambda states: calls.append(dict(states)))
    return calls


def saved_with_cuda(gpus: int) -> dict:
    states = RNGStateCheckpoint().state_dict()
    states["torch.cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(gpus)]  # one per GPU it saw
    return states


def test_a_resume_on_fewer_gpus_restores_the_gpus_it_has(monkeypatch: pytest.MonkeyPatch, restored) -> None:
    """A 2-GPU DDP run resumed with `trainer=gpu`: setting the state of a second GPU that is not there fails."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    RNGStateCheckpoint().load_state_dict(saved_with_cuda(2))
    (states,) = restored
    assert [int(s[0]) for s in states["torch.cuda"]] == [0]


def test_without_cuda_the_saved_gpu_states_are_left_alone(restored) -> None:
    saved = saved_with_cuda(2)
    RNGStateCheckpoint().load_state_dict(saved)
    (states,) = restored
    assert "torch.cuda" not in states
    assert torch.equal(states["torch"], saved["torch"])  # the rest is restored
