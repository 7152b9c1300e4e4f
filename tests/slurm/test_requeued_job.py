"""Which checkpoint a requeued SLURM job resumes from (`wrncifar.run.resuming.resume_restarted_run`), in the
job's environment as SLURM sets it: its own newest, or none; never another run's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wrncifar.callbacks.checkpoint_on_signal import SLURM_JOB_KEY, slurm_job
from wrncifar.run.checkpoints import CheckpointError
from wrncifar.run.resuming import resume_restarted_run


@pytest.fixture
def requeued_job(monkeypatch: pytest.MonkeyPatch) -> str:
    """Task 3 of array job 40, started again after one requeue."""
    for name, value in [("SLURM_JOB_ID", "43"), ("SLURM_ARRAY_JOB_ID", "40"), ("SLURM_ARRAY_TASK_ID", "3")]:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLURM_CLUSTER_NAME", "wrncifar")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    return "wrncifar:40_3"


def save_checkpoint(path: Path, saved_by: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"pytorch-lightning_version": "2.6.6", "state_dict": {}, "global_step": 5}
    torch.save(checkpoint | ({SLURM_JOB_KEY: saved_by} if saved_by else {}), path)


def test_a_requeued_job_resumes_from_its_own_newest_checkpoint(requeued_job, make_config, tmp_path) -> None:
    assert slurm_job() == requeued_job  # what scontrol requeue names: the array task, not SLURM_JOB_ID
    cfg = make_config(["model=wrn_tiny", "ckpt_path=/elsewhere/start.ckpt", "init_from=/elsewhere/weights.pt"])
    resume_restarted_run(cfg)
    assert cfg.get("resume") is None, "nothing saved yet: the job starts from the beginning, as it first did"
    save_checkpoint(tmp_path / "checkpoints" / "last.ckpt", saved_by=requeued_job)
    resume_restarted_run(cfg)
    assert (cfg.resume, cfg.ckpt_path, cfg.init_from) == (str(tmp_path), None, None)


def test_a_requeued_job_refuses_to_overwrite_another_runs_checkpoint(requeued_job, make_config, tmp_path) -> None:
    cfg = make_config(["model=wrn_tiny"])
    for saved_by, who in [("wrncifar:17", "SLURM job 17"), (None, "a run outside SLURM")]:
        save_checkpoint(tmp_path / "checkpoints" / "last.ckpt", saved_by=saved_by)
        with pytest.raises(CheckpointError, match=f"saved by {who}: starting over would overwrite that run"):
            resume_restarted_run(cfg)


def test_a_first_run_or_an_explicit_resume_is_left_as_it_is(requeued_job, make_config, tmp_path, monkeypatch) -> None:
    save_checkpoint(tmp_path / "checkpoints" / "last.ckpt", saved_by="wrncifar:17")
    cfg = make_config(["model=wrn_tiny"])
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    resume_restarted_run(cfg)  # not requeued: a new run, as outside SLURM
    assert cfg.get("resume") is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    cfg = make_config(["model=wrn_tiny", f"+resume={tmp_path / 'other'}"])
    resume_restarted_run(cfg)  # resume= in the job's command says where to continue
    assert cfg.resume == str(tmp_path / "other")
