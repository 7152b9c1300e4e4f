"""Crash and resume as a user lives it: real `python src/train.py` processes, killed and resumed with `resume=`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from tests.conftest import (
    CONFIGS,
    FEW_IMAGES,
    HANG_TIMEOUT_S,
    ROOT,
    TINY_SYNTHETIC,
    TRAINED_EPOCHS,
    last_logged,
    read_metrics,
    run_entry,
)
from wrncifar.callbacks.checkpoint_on_signal import TORCHRUN_LAUNCH_KEY
from wrncifar.run.checkpoints import CheckpointError, load_checkpoint
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.folder_lock import check_folder_free
from wrncifar.run.resuming import check_not_finished, checkpoint_to_resume, resume_overrides

# The on-device loader keeps its position in checkpoints; step.ckpt every 3 steps; 2 epochs of 32 steps.
RESUMABLE = [
    *TINY_SYNTHETIC,
    "data.on_device=true",
    "data.batch_size=64",
    "trainer.max_epochs=2",
    "callbacks.step_checkpoint.every_n_train_steps=3",
    "test=false",
]
TOTAL_STEPS = 2 * (100 * (30 - 10) // 64 + 1)


def _as_in_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a job started in the background (CI, nohup) inherits SIGINT ignored, and
    Python then never installs its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_entry(args: list[str], launcher: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python [launcher…] src/train.py args…` in the background."""
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen(
        [sys.executable, *launcher, str(ROOT / "src" / "train.py"), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )


def saved_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except FileNotFoundError:  # not written yet (writes are atomic: a file there is whole)
        return -1


def wait_for_checkpoint_after(
    process: subprocess.Popen, run_dir: Path, step: int, timeout: float = HANG_TIMEOUT_S
) -> int:
    """Wait until the run has saved step.ckpt past `step` (or ended); return the saved step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = saved_step(run_dir / "checkpoints" / "step.ckpt")
        if latest > step or process.poll() is not None:
            return latest
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no checkpoint past step {step} within {timeout} s")


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_training(resumed: Path, reference: Path) -> None:
    got, want = final_state(resumed), final_state(reference)
    assert got["global_step"] == want["global_step"] == TOTAL_STEPS
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs from the uninterrupted run"
    last_val = [r["val/acc"] for r in read_metrics(resumed) if r.get("val/acc")][-1]
    assert last_val == [r["val/acc"] for r in read_metrics(reference) if r.get("val/acc")][-1]


def stop_with_signal(run_dir: Path, signum: signal.Signals, after_step: int) -> None:
    """Start a run, send `signum` once it has checkpointed past `after_step`; check it stopped as documented."""
    process = start_entry([*RESUMABLE, f"hydra.run.dir={run_dir}"])
    wait_for_checkpoint_after(process, run_dir, step=after_step)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=HANG_TIMEOUT_S)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "`weights_only` was not set" not in stderr  # the signal's own save says what it saves
    assert f"Stopped by {signum.name}; resume with resume={run_dir}" in (run_dir / "train.log").read_text()
    stopped_at = final_state(run_dir)["global_step"]
    assert after_step < stopped_at < TOTAL_STEPS, "last.ckpt holds the step the signal stopped at"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_entry("train.py", [*RESUMABLE, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_resume_reruns_the_saved_overrides_in_the_same_folder(tmp_path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["model=wrn_tiny", "trainer.max_epochs=5", f"hydra.run.dir={tmp_path}", "ckpt_path=x.ckpt"])
    )
    args = resume_overrides([f"resume={tmp_path}", "trainer.max_epochs=9"])
    assert args == [
        "model=wrn_tiny",
        "trainer.max_epochs=5",
        "trainer.max_epochs=9",  # later wins: a resumed run can be extended
        f"resume={tmp_path}",
        f"hydra.run.dir={tmp_path}",
    ]
    assert resume_overrides(["model=wrn_tiny"]) == ["model=wrn_tiny"]


def test_resume_of_a_folder_that_is_not_a_run_fails_before_hydra_starts(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not a training run's folder"):
        resume_overrides([f"resume={tmp_path}"])
    result = run_entry("train.py", [f"resume={tmp_path}"])
    assert result.returncode == 1
    assert "not a training run's folder" in result.stderr and "Traceback" not in result.stderr


def saved_run(run_dir: Path, checkpoints: dict[str, tuple[int, int]]) -> Path:
    """A run folder as training leaves it, as far as resuming reads it: its overrides, and checkpoints
    name → (epochs, steps) trained, written oldest first in the order given."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["trainer.max_epochs=2"]))
    (run_dir / "checkpoints").mkdir()
    for seconds, (name, (epochs, steps)) in enumerate(checkpoints.items(), start=1_000_000):
        loops = {"fit_loop": {"epoch_progress": {"current": {"processed": epochs}}}}
        checkpoint = {"pytorch-lightning_version": "2.6.6", "state_dict": {}, "global_step": steps, "loops": loops}
        torch.save(checkpoint, run_dir / "checkpoints" / name)
        os.utime(run_dir / "checkpoints" / name, (seconds, seconds))
    return run_dir


def test_resume_of_a_path_that_is_not_a_run_folder_says_what_it_is_instead(tmp_path) -> None:
    run = saved_run(tmp_path / "runs" / "run", {"last.ckpt": (2, 30)})
    last = run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError) as err:
        resume_overrides([f"resume={tmp_path / 'nope'}"])
    assert str(err.value).startswith(f"resume={tmp_path / 'nope'}: the folder does not exist")
    with pytest.raises(CheckpointError) as err:
        resume_overrides([f"resume={last}"])
    assert str(err.value) == (
        f"resume={last} is a file: resume= takes a training run's folder; resume={run} continues the run it belongs "
        f"to from its furthest checkpoint; a checkpoint file goes to ckpt_path={last}, which continues from it in a "
        "new run folder"
    )
    with pytest.raises(CheckpointError) as err:
        resume_overrides([f"resume={run / 'checkpoints'}"])
    assert (
        str(err.value)
        == f"resume={run / 'checkpoints'} is a folder inside the training run {run}: resume={run} continues it"
    )
    with pytest.raises(CheckpointError) as err:
        resume_overrides([f"resume={run.parent}"])  # logs/train/runs, or a multirun's folder
    assert str(err.value).endswith(
        "not a training run's folder (no .hydra/overrides.yaml in it); it holds the runs run: resume one of them"
    )


def test_a_copied_run_resumes_from_its_furthest_checkpoint_not_its_newest_file(tmp_path, make_config) -> None:
    """`cp -r run copy` dates each file by when it was copied: step.ckpt, copied last, is the newest file."""
    run = saved_run(tmp_path / "copy", {"last.ckpt": (2, 30), "epoch_001.ckpt": (2, 30), "step.ckpt": (1, 25)})
    cfg = make_config([f"+resume={run}"])
    path = checkpoint_to_resume(cfg)
    assert path == run / "checkpoints" / "last.ckpt" and cfg.ckpt_path == str(path)
    with pytest.raises(ConfigError, match="is from a run that has already trained 2 epochs"):
        check_not_finished(load_checkpoint(path), path, max_epochs=2, max_steps=-1)  # not trained again


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(tmp_path, reference) -> None:
    run_dir = tmp_path / "run"
    process = start_entry([*RESUMABLE, f"hydra.run.dir={run_dir}"])
    step = wait_for_checkpoint_after(process, run_dir, step=7)
    time.sleep(0.5)  # keep training past the checkpoint: the kill lands at an arbitrary step
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < step < TOTAL_STEPS, "the run was killed before it finished"

    result = run_entry("train.py", [f"resume={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(run_dir, reference)
    assert (run_dir / "csv" / "metrics.csv").is_file()  # the same run folder and CSV log, appended to


@pytest.mark.slow
def test_a_process_torchrun_restarts_continues_its_run_from_its_furthest_checkpoint(tmp_path, reference) -> None:
    """`torchrun --max-restarts`: the process killed mid-run is started again by torchrun, with the same command
    line into the same folder, and ends as the uninterrupted run."""
    run_dir = tmp_path / "run"
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "--max-restarts=1")
    process = start_entry([*RESUMABLE, f"hydra.run.dir={run_dir}"], launcher=torchrun)
    step = wait_for_checkpoint_after(process, run_dir, step=7)
    worker = int((run_dir / ".run.lock").read_text().split()[1])  # the training process, which holds the folder
    os.kill(worker, signal.SIGKILL)
    _, stderr = process.communicate(timeout=HANG_TIMEOUT_S)
    assert process.returncode == 0, stderr[-3000:]
    assert 0 < step < TOTAL_STEPS, "the run was killed before it finished"
    log = (run_dir / "train.log").read_text()
    assert f"torchrun started the run's processes again (restart 1 of 1): resuming {run_dir}" in log
    assert_same_training(run_dir, reference)
    assert re.fullmatch(r"[0-9a-f-]{36}", final_state(run_dir)[TORCHRUN_LAUNCH_KEY])  # --standalone's run id


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_cleanly_and_resumes_exactly(tmp_path, reference) -> None:
    run_dir = tmp_path / "run"
    stop_with_signal(run_dir, signal.SIGTERM, after_step=4)

    result = run_entry("train.py", [f"resume={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(run_dir, reference)


@pytest.mark.slow
def test_twenty_kills_in_a_row_end_as_one_uninterrupted_run(tmp_path, reference) -> None:
    run_dir = tmp_path / "run"
    # A checkpoint every 2 of the 64 steps: room for 20 kills, each after at least one new checkpoint.
    process = start_entry([*RESUMABLE, "callbacks.step_checkpoint.every_n_train_steps=2", f"hydra.run.dir={run_dir}"])
    step, kills = 0, 0
    while kills < 20:
        step = wait_for_checkpoint_after(process, run_dir, step)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        process = start_entry([f"resume={run_dir}"])
    assert kills == 20, f"the run finished after {kills} kills; give it more steps"
    _, stderr = process.communicate(timeout=HANG_TIMEOUT_S)
    assert process.returncode == 0, stderr[-3000:]
    assert_same_training(run_dir, reference)


def test_corrupt_last_checkpoint_falls_back_to_the_furthest_valid_one_and_says_so(tmp_path, reference) -> None:
    run_dir = tmp_path / "run"
    result = run_entry("train.py", [*RESUMABLE, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])  # a crash mid-copy, or a bad disk
    result = run_entry("train.py", [f"resume={run_dir}", "trainer.max_epochs=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "last.ckpt is corrupt" in out
    assert f"Resuming {run_dir} from {run_dir / 'checkpoints' / 'epoch_000.ckpt'}" in out  # the epoch-end one


def test_missing_checkpoint_path_fails_with_exit_1_before_training(tmp_path) -> None:
    result = run_entry(
        "train.py", [*TINY_SYNTHETIC, f"ckpt_path={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path}"]
    )
    assert result.returncode == 1
    assert "nope.ckpt does not exist" in result.stdout + result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_checkpoint_of_another_architecture_lists_the_differences_and_exits_1(tmp_path, reference) -> None:
    ckpt = reference / "checkpoints" / "last.ckpt"
    result = run_entry(
        "train.py", [*TINY_SYNTHETIC, "model.net.widths=[8,16,32,32]", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}"]
    )
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "different network" in out and "different shape" in out and "Traceback" not in out


@pytest.mark.slow
def test_sigusr1_outside_slurm_also_saves_and_exits_cleanly(tmp_path) -> None:
    stop_with_signal(tmp_path / "run", signal.SIGUSR1, after_step=1)


@pytest.mark.slow
def test_ctrl_c_saves_says_how_to_resume_and_exits_130(tmp_path) -> None:
    stop_with_signal(tmp_path / "run", signal.SIGINT, after_step=1)


def test_a_resumed_run_logs_to_the_same_wandb_run(tmp_path) -> None:
    from omegaconf import OmegaConf

    from wrncifar.run.tracking import keep_wandb_run, wandb_run_id

    assert wandb_run_id(tmp_path) is None
    (tmp_path / "wandb" / "run-20261126_101010-abc123").mkdir(parents=True)
    (tmp_path / "wandb" / "latest-run").symlink_to("run-20261126_101010-abc123")
    assert wandb_run_id(tmp_path) == "abc123"
    cfg = OmegaConf.create({"paths": {"output_dir": str(tmp_path)}, "logger": {"wandb": {"id": None}}})
    keep_wandb_run(cfg)
    assert cfg.logger.wandb.id == "abc123" and cfg.logger.wandb.resume == "allow"
    cfg.logger.wandb.id = "chosen"
    keep_wandb_run(cfg)
    assert cfg.logger.wandb.id == "chosen", "an explicit id wins"
    # The id its logger recorded wins over `latest-run` (W&B's files may be elsewhere: `logger.wandb.save_dir`);
    # the file is data, and anything but an id is ignored.
    (tmp_path / "wandb_run_id").write_text("xyz789\n")
    assert wandb_run_id(tmp_path) == "xyz789"
    (tmp_path / "wandb_run_id").write_text("../../elsewhere\n")
    assert wandb_run_id(tmp_path) == "abc123"


# Two epochs of 2 steps; the best-checkpoint callback monitors the epoch number, lowest best, so epoch 1 does not
# improve on epoch 0 — the case where Lightning's own save_last leaves last.ckpt at epoch 0.
NOT_IMPROVING = [
    *FEW_IMAGES,
    "trainer.max_epochs=2",
    "callbacks.model_checkpoint.monitor=epoch",
    "callbacks.model_checkpoint.mode=min",
    "logger=[csv,tensorboard]",
]


@pytest.fixture(scope="module")
def resumed_longer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 2-epoch run whose last epoch is not its best, its last.ckpt as written, then resumed to 3 epochs."""
    run_dir = tmp_path_factory.mktemp("not_improving")
    first = run_entry("train.py", [*NOT_IMPROVING, f"hydra.run.dir={run_dir}"])
    assert first.returncode == 0, first.stderr[-3000:]
    last_before = final_state(run_dir)
    resumed = run_entry("train.py", [f"resume={run_dir}", "trainer.max_epochs=3"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming {run_dir} from {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.stdout + resumed.stderr
    return run_dir, last_before


@pytest.mark.slow
def test_last_ckpt_is_the_newest_state_when_the_last_epoch_is_not_the_best(resumed_longer) -> None:
    run_dir, last_before = resumed_longer
    assert (last_before["epoch"], last_before["global_step"]) == (1, 4)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("epoch_*.ckpt")) == ["epoch_000.ckpt"]
    last = final_state(run_dir)
    assert (last["epoch"], last["global_step"]) == (2, 6), "the resume trained epoch 2 only"


@pytest.mark.slow
def test_a_resumed_run_keeps_its_whole_history_once_in_every_logger(resumed_longer) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = resumed_longer
    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows if r.get("val/acc")] == [0, 1, 2]
    assert [int(r["epoch"]) for r in rows if r.get("train/loss")] == [0, 1, 2]
    assert len([r for r in rows if r.get("test/acc")]) == 1, "the first run's test is dropped, the resumed one kept"
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/acc")] == [1, 3, 5]
    assert [e.step for e in events.Scalars("test/acc")] == [6]


@pytest.mark.slow
def test_optimizer_settings_changed_on_resume_take_effect_and_the_old_config_stays_on_record(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    constant = ["model.scheduler.name=constant", "model.scheduler.warmup_epochs=0", "test=false"]
    first = run_entry("train.py", [*FEW_IMAGES, *constant, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"])
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_entry(
        "train.py",
        [f"resume={run_dir}", "trainer.max_epochs=2", "model.optimizer.lr=0.05", "model.optimizer.momentum=0.5"],
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout + resumed.stderr
    assert "Resumed at step 2 with other settings than the checkpoint's" in out
    assert "'lr': 0.1" in out and "'lr': 0.05" in out

    last = final_state(run_dir)
    (group,) = last["optimizer_states"][0]["param_groups"]
    assert (group["lr"], group["momentum"]) == (0.05, 0.5), "what was trained after the resume"
    assert last["hyper_parameters"]["optimizer"]["lr"] == 0.05
    now = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    before = yaml.safe_load((run_dir / ".hydra" / "history" / "1" / "config.yaml").read_text())
    assert (before["model"]["optimizer"]["lr"], now["model"]["optimizer"]["lr"]) == (0.1, 0.05)


@pytest.mark.slow
def test_runs_started_together_get_folders_of_their_own(tmp_path: Path) -> None:
    args = [*FEW_IMAGES, "trainer.max_epochs=1", "test=false", f"paths.log_dir={tmp_path}"]
    processes = [start_entry([*args, f"seed={seed}"]) for seed in (1, 2, 3)]
    for process in processes:
        assert process.wait(timeout=HANG_TIMEOUT_S) == 0, process.stderr.read()[-3000:]
    runs = sorted((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 3
    seeds = sorted(
        next(o for o in yaml.safe_load((r / ".hydra" / "overrides.yaml").read_text()) if o.startswith("seed="))
        for r in runs
    )
    assert seeds == ["seed=1", "seed=2", "seed=3"]
    assert all((r / "checkpoints" / "last.ckpt").is_file() for r in runs)


def test_run_folder_names_differ_within_one_second() -> None:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        names = {str(compose("train.yaml", return_hydra_config=True).hydra.run.dir) for _ in range(3)}
    assert len(names) == 3


@pytest.mark.slow
def test_a_run_that_is_still_running_cannot_be_resumed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    process = start_entry([*RESUMABLE, f"hydra.run.dir={run_dir}", "trainer.max_epochs=30"])
    try:
        wait_for_checkpoint_after(process, run_dir, step=0)
        config_before = (run_dir / ".hydra" / "config.yaml").read_text()
        resumed = run_entry("train.py", [f"resume={run_dir}"])
        assert resumed.returncode == 1
        assert f"{run_dir} is in use by a run that is still running (process {process.pid}" in resumed.stderr
        assert "Traceback" not in resumed.stderr
        assert (run_dir / ".hydra" / "config.yaml").read_text() == config_before, "nothing of the live run touched"
        assert not (run_dir / ".hydra" / "history").exists()
    finally:
        process.kill()
        process.wait()
    check_folder_free(run_dir)  # a killed run leaves no lock behind


@pytest.mark.slow
def test_a_resume_that_stops_before_training_leaves_the_logged_history_as_it_was(
    trained_run: Path, tmp_path: Path
) -> None:
    """The rows a resumed run logs again are dropped when it logs its first metrics, not when it starts: a resume
    refused before training (here: more CPU processes than cores) keeps the finished run's test row."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    history = (run_dir / "csv" / "metrics.csv").read_text()
    assert "test/acc" in history.splitlines()[0]
    refused = run_entry(
        "train.py",
        [f"resume={run_dir}", f"trainer.max_epochs={TRAINED_EPOCHS + 1}", "trainer=ddp_cpu", "trainer.devices=99"],
    )
    assert refused.returncode == 1 and "starts 99 CPU processes" in refused.stdout + refused.stderr
    assert (run_dir / "csv" / "metrics.csv").read_text() == history


@pytest.mark.slow
def test_resuming_a_finished_run_says_so_and_what_to_do(tmp_path, reference) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    os.utime(run_dir / "checkpoints" / "step.ckpt")  # copied last, as `cp -r` may: the newest file, 1 step short
    record = {p: p.read_bytes() for p in [*run_dir.glob(".hydra/*.yaml"), *run_dir.glob("*.log")] if p.is_file()}
    result = run_entry("train.py", [f"resume={run_dir}"])
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "is from a run that has already trained 2 epochs" in out and "larger trainer.max_epochs" in out
    assert "optimized_metric" not in out and "Traceback" not in out
    # The refused command leaves the run's record of what trained it as it was (its log aside), and no history.
    assert {p: p.read_bytes() for p in record if p.name != "train.log"} == {
        p: b for p, b in record.items() if p.name != "train.log"
    }
    assert not (run_dir / ".hydra" / "history").exists()


@pytest.mark.slow
def test_a_slurm_job_requeued_after_its_training_ended_only_tests(tmp_path) -> None:
    """Preempted or requeued once training is over (in its test, say), the job's rerun of the same command trains
    nothing and tests the best checkpoint, instead of refusing a finished run."""
    run_dir = tmp_path / "run"
    args = [*FEW_IMAGES, "trainer.max_epochs=2", "logger=csv", f"hydra.run.dir={run_dir}"]
    job = {"SLURM_JOB_ID": "4242", "SLURM_CLUSTER_NAME": "test"}
    first = run_entry("train.py", args, env=job)
    assert first.returncode == 0, first.stderr[-3000:]
    trained = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    tested = last_logged(read_metrics(run_dir), "test/acc")

    again = run_entry("train.py", args, env={**job, "SLURM_RESTART_COUNT": "1"})
    out = again.stdout + again.stderr
    # Exit 0 also says the optimized metric (val/acc_best, restored: nothing was validated) was there to return.
    assert again.returncode == 0, out[-3000:]
    assert "SLURM job 4242 was requeued (restart 1) after its training had ended (2 epochs" in out
    assert re.search(r"Testing the best checkpoint: .*/checkpoints/epoch", out)
    assert "already trained" not in out and "Traceback" not in out
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == trained["global_step"]
    assert last_logged(read_metrics(run_dir), "test/acc") == tested  # the same best checkpoint, tested again

    # Another job's checkpoint, or no requeue at all, is still a finished run to refuse.
    refused = run_entry("train.py", [f"resume={run_dir}"], env={"SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "1"})
    assert refused.returncode == 1 and "already trained 2 epochs" in refused.stdout + refused.stderr


def test_a_torchrun_restart_after_training_ended_tests_only_a_run_of_its_own(monkeypatch, tmp_path) -> None:
    """A torchrun process that failed in the test is started again: the finished run it saved is tested, not
    refused; a finished run another command saved is refused as before."""
    for name, value in [("TORCHELASTIC_RUN_ID", "4e1d"), ("TORCHELASTIC_RESTART_COUNT", "1")]:
        monkeypatch.setenv(name, value)
    loops = {"fit_loop": {"epoch_progress": {"current": {"processed": 2}}}}
    finished = {"global_step": 30, "loops": loops, TORCHRUN_LAUNCH_KEY: "4e1d"}
    path = tmp_path / "last.ckpt"
    assert check_not_finished(finished, path, max_epochs=2, max_steps=-1)
    for other in [{**finished, TORCHRUN_LAUNCH_KEY: "77aa"}, {"global_step": 30, "loops": loops}]:
        with pytest.raises(ConfigError, match="has already trained 2 epochs"):
            check_not_finished(other, path, max_epochs=2, max_steps=-1)


def test_resume_and_ckpt_path_together_are_refused(make_config, tmp_path) -> None:
    cfg = make_config([f"+resume={tmp_path}", f"ckpt_path={tmp_path / 'x.ckpt'}"])
    with pytest.raises(ConfigError, match=r"continues that run from its furthest checkpoint, ckpt_path=.*give one"):
        checkpoint_to_resume(cfg)


@pytest.mark.slow
def test_an_epoch_end_resume_on_the_loader_worker_path_is_exact(tmp_path) -> None:
    """The default data path (a DataLoader shuffled and augmented from the global generators): 2 epochs straight,
    or 1 epoch and a resume for the second, end with the same weights."""
    args = [*FEW_IMAGES, "data.num_workers=0", "test=false", "logger=null", "model.net.dropout=0.2"]
    args += ["model.scheduler.name=constant", "model.scheduler.warmup_epochs=0"]  # the same lr for 1 or 2 epochs
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_entry("train.py", [*args, "trainer.max_epochs=2", f"hydra.run.dir={straight}"]).returncode == 0
    assert run_entry("train.py", [*args, "trainer.max_epochs=1", f"hydra.run.dir={split}"]).returncode == 0
    resumed = run_entry("train.py", [f"resume={split}", "trainer.max_epochs=2"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, want = final_state(split), final_state(straight)
    assert got["global_step"] == want["global_step"] == 4
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs from the uninterrupted run"
