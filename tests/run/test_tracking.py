"""W&B tracking with the real wandb library, offline: what a run records, read back from its `.wandb` file; automatic
offline mode without an account; no prompt; no API key on disk; multirun grouping; CSV and TensorBoard parity."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import FEW_IMAGES, HANG_TIMEOUT_S, ROOT, isolated_wandb_env, read_metrics, wandb_records
from wrncifar.run import tracking
from wrncifar.run.config_validation import ConfigError
from wrncifar.run.entry import run
from wrncifar.run.fit_and_test import train_for_sweep
from wrncifar.run.loggers import WandbLogger, wandb_mode
from wrncifar.run.tracking import REDACTED, SecretFilter, git_state, wandb_run_id, without_secrets

FAKE_KEY = "fake0wandb0key0" + "0123456789abcdef" * 2 + "0123456789"  # 40+ characters, like a real key
# The smallest synthetic set: two training batches, one validation and one test batch.


def records_of(records: list, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def run_config(records: list) -> dict:
    return {item_key(i): json.loads(i.value_json) for c in records_of(records, "config") for i in c.update}


def final_summary(records: list) -> dict:
    summary: dict = {}
    for s in records_of(records, "summary"):
        for item in s.update:
            summary[item_key(item)] = json.loads(item.value_json)
    return summary


def history(records: list) -> dict[str, list]:
    rows: dict[str, list] = {}
    for h in records_of(records, "history"):
        for item in h.item:
            rows.setdefault(item_key(item), []).append(json.loads(item.value_json))
    return rows


def logged_metric_keys(records: list) -> set[str]:
    """History keys that are metrics: neither W&B's own (`_step`, …) nor media (tables)."""
    keys = set(history(records))
    media = {k.removesuffix("_type") for k in keys if k.endswith("/_type")}  # a table's fields: <key>/_type, …
    return {k for k in keys if not k.startswith("_") and not k.startswith(tuple(media))}


@pytest.fixture(scope="module")
def job(wandb_sweep) -> Path:
    return wandb_sweep[0] / "0"


@pytest.mark.slow
def test_without_credentials_runs_go_offline_with_a_note_and_never_prompt(wandb_sweep) -> None:
    sweep_dir, result = wandb_sweep  # ran with stdin closed and a timeout: a login prompt would have failed it
    output = result.stdout + result.stderr
    assert output.count("W&B: no API key or login found, so logging offline") == 2, "one note per job"
    assert "upload later with `wandb sync" in output
    for job in ("0", "1"):
        (run,) = records_of(wandb_records(sweep_dir / job), "run")
        assert run.telemetry.feature.offline


@pytest.mark.slow
def test_the_run_config_holds_the_resolved_config_overrides_git_params_and_dataset_sizes(
    wandb_sweep, job: Path
) -> None:
    config = run_config(wandb_records(job))
    saved = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "config.yaml"), resolve=False)
    for key in ("data", "model", "trainer", "callbacks", "logger", "seed"):
        assert key in config, key
    assert config["model"]["optimizer"]["lr"] == saved["model"]["optimizer"]["lr"] == 0.05
    assert config["overrides"] == yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    assert config["git"]["commit"] in wandb_sweep[1].git_heads and isinstance(config["git"]["dirty"], bool)
    assert config["model/params/total"] == config["model/params/trainable"] > 100_000
    # 4 training images per class, 2 of them held out for validation; 1 test image per class.
    assert (config["data/size/train"], config["data/size/val"], config["data/size/test"]) == (200, 200, 100)
    assert len(config["data/classes"]) == 100


@pytest.mark.slow
def test_metrics_and_the_summary_show_best_val_acc_and_final_test_acc(job: Path) -> None:
    records = wandb_records(job)
    metrics = history(records)
    expected = {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_top5", "val/acc_best", "test/acc"}
    assert expected | {"lr-SGD", "epoch", "train/images_per_sec", "trainer/global_step"} <= set(metrics)
    summary = final_summary(records)
    assert summary["val/acc"] == {"max": max(metrics["val/acc"])}
    assert summary["test/acc"] == {"last": metrics["test/acc"][-1]}
    defined = {m.name: m for m in records_of(records, "metric") if m.name}
    assert defined["val/acc"].step_metric == "trainer/global_step"


@pytest.mark.slow
def test_jobs_of_a_multirun_share_a_group_and_are_named_by_their_overrides(wandb_sweep) -> None:
    sweep_dir, _ = wandb_sweep
    runs = [records_of(wandb_records(sweep_dir / job), "run")[0] for job in ("0", "1")]
    assert [r.run_group for r in runs] == [sweep_dir.name, sweep_dir.name]
    assert [r.display_name for r in runs] == ["model.optimizer.lr=0.05", "model.optimizer.lr=0.2"]
    assert runs[0].run_id != runs[1].run_id


@pytest.mark.slow
def test_checkpoints_are_artifacts_with_log_model(job: Path) -> None:
    models = [a for a in records_of(wandb_records(job), "artifact") if a.type == "model"]
    assert models and all(e.path == "model.ckpt" for a in models for e in a.manifest.contents)
    assert any("best" in a.aliases for a in models)
    # save_top_k=-1: each checkpoint is logged right after it is saved, the last epoch's too (written in the
    # background, it was once skipped as not yet on disk), and last.ckpt.
    logged = {json.loads(a.metadata)["original_filename"] for a in models}
    saved = {p.name for p in (job / "checkpoints").glob("*.ckpt")}
    assert logged == saved and "epoch_001.ckpt" in saved, (logged, saved)


@pytest.mark.slow
def test_csv_tensorboard_and_wandb_carry_the_same_metrics(job: Path) -> None:
    csv_keys = {k for row in read_metrics(job) for k, v in row.items() if v} - {"step"}
    events = EventAccumulator(str(job / "tensorboard"))
    events.Reload()
    tensorboard_keys = set(events.Tags()["scalars"]) - {"hp_metric"}
    wandb_keys = logged_metric_keys(wandb_records(job)) - {"trainer/global_step"}
    assert csv_keys == tensorboard_keys == wandb_keys
    assert {"lr-SGD", "train/images_per_sec", "test/acc_top5"} <= csv_keys


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Sets the environment of `isolated_wandb_env(tmp_path / "home", **extra)` for an in-process run; W&B's
    process-wide state is torn down afterwards."""
    import wandb

    def use(**extra: str) -> Path:
        wandb.teardown()  # W&B keeps settings read from the environment for the life of the process
        for key, value in isolated_wandb_env(tmp_path / "home", **extra).items():
            monkeypatch.setenv(key, value)
        return tmp_path / "home"

    yield use
    wandb.finish()
    wandb.teardown()


@pytest.fixture(scope="module")
def ddp_run_with_a_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """`python src/train.py trainer=ddp_cpu debug=limit logger=wandb` (two processes, a debug config) with an
    API key in the environment and WANDB_MODE=offline. Returns the run folder, HOME and the finished process."""
    root = tmp_path_factory.mktemp("ddp_wandb")
    run_dir, home = root / "run", root / "home"
    args = [*FEW_IMAGES, "trainer=ddp_cpu", "debug=limit", "trainer.devices=2", "trainer.max_epochs=1"]
    # A value that interpolates the key: printed in the config tree, logged, and sent to W&B as the run's notes.
    args += ["+logger.wandb.notes=key ${oc.env:WANDB_API_KEY}", "extras.print_config=true"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), *args, "logger=wandb", f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=isolated_wandb_env(home, WANDB_API_KEY=FAKE_KEY, WANDB_MODE="offline"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, home, result


@pytest.mark.slow
def test_under_ddp_rank_zero_logs_one_run_for_all_ranks(ddp_run_with_a_key) -> None:
    run_dir, _, _ = ddp_run_with_a_key
    assert len(list((run_dir / "wandb").glob("*run-*"))) == 1
    records = wandb_records(run_dir)
    assert history(records)["test/acc"]
    (confusion,) = [json.loads(p.read_text()) for p in run_dir.glob("wandb/*run-*/files/media/table/test/conf*.json")]
    assert sum(row[2] for row in confusion["data"]) == 100, "both ranks' halves of the test set are counted"


@pytest.mark.slow
def test_an_api_key_in_the_environment_is_written_nowhere(ddp_run_with_a_key) -> None:
    run_dir, home, result = ddp_run_with_a_key
    files = [p for p in [*run_dir.rglob("*"), *home.rglob("*")] if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
    leaks = [p for p in files if FAKE_KEY.encode() in contents(p)]
    assert not leaks, leaks
    assert FAKE_KEY not in result.stdout + result.stderr


def contents(path: Path) -> bytes:
    """The bytes of `path`; none when W&B's background process removed it (a staging file) meanwhile."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_offline_without_credentials_and_never_a_prompt(wandb_env, monkeypatch, caplog) -> None:
    wandb_env()
    with caplog.at_level(logging.WARNING, logger="wrncifar.run.loggers"):
        assert wandb_mode(None, run_dir="logs/x") == "offline"
    assert "wandb sync logs/x/wandb/offline-run-*" in caplog.text
    assert wandb_mode(True) == "offline"
    with pytest.raises(ConfigError, match="wandb login"):
        wandb_mode(False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(None) is None, "W&B's own WANDB_MODE is respected"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert wandb_mode(None) is None, "with credentials, W&B decides (online) without a network check here"
    assert wandb_mode(False) == "online"


def test_the_api_key_is_redacted_from_logged_config(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    config = {"a": {"b": [1, f"key={FAKE_KEY}"]}, "c": "kept"}
    assert without_secrets(config) == {"a": {"b": [1, REDACTED]}, "c": "kept"}


def test_the_api_key_is_redacted_from_omegaconf_containers_as_hydra_hands_them_over(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    cfg = OmegaConf.create(
        {
            "tags": ["a", "${oc.env:WANDB_API_KEY}"],
            "wandb": {"tags": "${tags}", "notes": "key ${oc.env:WANDB_API_KEY}", "summary": {"val/acc": "max"}},
        }
    )
    redacted_wandb = {"tags": ["a", REDACTED], "notes": REDACTED, "summary": {"val/acc": "max"}}
    assert without_secrets({"tags": cfg.tags}) == {"tags": ["a", REDACTED]}, "a ListConfig in a dict"
    assert without_secrets(cfg.wandb) == redacted_wandb, "a ListConfig in a DictConfig"
    mixed = without_secrets([cfg.tags, {"wandb": cfg.wandb}, (cfg.tags,)])
    assert mixed == [["a", REDACTED], {"wandb": redacted_wandb}, [["a", REDACTED]]]
    assert type(mixed[0]) is list and type(mixed[1]["wandb"]) is dict and type(mixed[1]["wandb"]["tags"]) is list


def test_the_api_key_is_redacted_from_the_tags_and_config_tree_in_the_run_folder(
    make_config, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    set_up_only = [*FEW_IMAGES, "train=false", "test=false", "extras.print_config=true"]
    run(train_for_sweep, make_config([*set_up_only, "tags=[a,${oc.env:WANDB_API_KEY}]"]))
    assert (tmp_path / "tags.log").read_text() == f"{['a', REDACTED]!r}\n"
    assert f"{['a', REDACTED]!r}" in (tmp_path / "config_tree.log").read_text()
    leaks = [p.name for p in tmp_path.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert not leaks, leaks


def test_the_api_key_is_redacted_from_the_tags_given_to_wandb(wandb_env, tmp_path: Path) -> None:
    wandb_env(WANDB_API_KEY=FAKE_KEY)
    tags = OmegaConf.create({"tags": ["a", "${oc.env:WANDB_API_KEY}"]}).tags  # `tags: ${tags}`, as instantiated
    logger = WandbLogger(save_dir=str(tmp_path), project="p", tags=tags)
    assert logger._wandb_init["tags"] == ["a", REDACTED]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"project": "team/wrn"}, "Invalid project name 'team/wrn'"),
        ({"tags": ["ok", "t" * 65]}, "is 65 characters. Tags must be between 1 and 64 characters"),
        ({"id": "a/b"}, "Run ID cannot contain the characters"),
        ({"summary": {"val/acc": "best"}}, "val/acc=best is not a summary W&B knows: use one of min, max"),
    ],
)
def test_settings_wandb_would_refuse_at_its_start_are_refused_when_the_logger_is_made(
    wandb_env, tmp_path: Path, settings: dict, message: str
) -> None:
    """Before the data and network are built, and with one message rather than W&B's traceback."""
    wandb_env()
    with pytest.raises(ConfigError, match=re.escape(message)):
        WandbLogger(save_dir=str(tmp_path), **{"project": "p", **settings})
    WandbLogger(save_dir=str(tmp_path), project="p", tags=["t" * 64], summary={"val/acc": "max,last"}, name=12)


def test_an_api_key_typed_on_the_command_line_reaches_no_wandb_file(wandb_env, tmp_path: Path, monkeypatch) -> None:
    """W&B records the command line as the run's args: it gets it redacted."""
    wandb_env(WANDB_API_KEY=FAKE_KEY)
    monkeypatch.setattr(sys, "argv", ["src/train.py", f"+logger.wandb.notes=key {FAKE_KEY}", "logger=wandb"])
    logger = WandbLogger(save_dir=str(tmp_path / "run"), project="p", offline=True)
    logger.experiment.log({"a": 1})
    logger.experiment.finish()
    assert sys.argv[1] == f"+logger.wandb.notes=key {FAKE_KEY}", "the command line is the process's again"
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    assert not [p for p in files if FAKE_KEY.encode() in contents(p)]


def test_the_wandb_run_records_its_id_in_the_run_folder_wherever_its_files_go(wandb_env, tmp_path: Path) -> None:
    """`logger.wandb.save_dir` elsewhere (a folder several runs share): `resume=` still finds this run's id."""
    wandb_env()
    logger = WandbLogger(save_dir=str(tmp_path / "shared"), run_dir=str(tmp_path / "run"), project="p", offline=True)
    run_id = logger.experiment.id
    logger.log_metrics({"a": 1.0}, step=0)
    logger.experiment.finish()
    assert (tmp_path / "run" / "wandb_run_id").read_text() == f"{run_id}\n"
    assert wandb_run_id(tmp_path / "run") == run_id and not (tmp_path / "run" / "wandb").exists()


def test_the_summaries_apply_to_the_metrics_as_logged_with_a_prefix(wandb_env, tmp_path: Path, monkeypatch) -> None:
    from wandb.sdk.wandb_run import Run

    defined: list[tuple[str, str]] = []
    define_metric = Run.define_metric

    def recording(run, name: str, *args, **kwargs):
        defined.append((name, kwargs.get("summary")))
        return define_metric(run, name, *args, **kwargs)

    monkeypatch.setattr(Run, "define_metric", recording)
    wandb_env()
    logger = WandbLogger(save_dir=str(tmp_path), project="p", offline=True, prefix="fold1", summary={"val/acc": "max"})
    logger.log_metrics({"val/acc": 0.5}, step=0)
    logger.experiment.finish()
    assert [d for d in defined if d[1]] == [("fold1-val/acc", "max")]  # Lightning's own have no summary


def test_an_api_key_typed_on_the_command_line_is_warned_of(monkeypatch, caplog) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(tracking, "command_line_overrides", lambda: [f"+logger.wandb.notes={FAKE_KEY}", "seed=1"])
    with caplog.at_level(logging.WARNING, logger="wrncifar.run.tracking"):
        tracking.redact_secrets_in_logs()
    assert "The W&B API key is typed in +logger.wandb.notes on the command line" in caplog.text
    assert "+logger.wandb.notes='${oc.env:WANDB_API_KEY}'" in caplog.text and FAKE_KEY not in caplog.text
    caplog.clear()
    monkeypatch.setattr(tracking.rank_zero_only, "rank", 1)  # another DDP process of the same command: said once
    with caplog.at_level(logging.WARNING, logger="wrncifar.run.tracking"):
        tracking.redact_secrets_in_logs()
    assert "API key" not in caplog.text


def test_git_state_outside_a_checkout_is_unknown(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    assert len(git_state(ROOT)["commit"]) == 40


def test_git_state_is_unknown_when_git_does_not_answer_in_time(tmp_path: Path, monkeypatch) -> None:
    """A `git status` stalled on a slow file system leaves the commit unknown rather than stopping the run."""
    slow_git = tmp_path / "bin" / "git"
    slow_git.parent.mkdir()
    slow_git.write_text("#!/bin/sh\nexec sleep 5\n")
    slow_git.chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow_git.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("wrncifar.run.tracking.GIT_TIMEOUT_S", 0.5)
    assert git_state(ROOT) == {"commit": None, "dirty": None}


def test_a_logged_traceback_that_quotes_the_api_key_is_redacted(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter())
    logger = logging.getLogger("tests.secret_traceback")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError(f"bad notes: {FAKE_KEY}")
        except ValueError:
            logger.exception("Job failed (%s)", FAKE_KEY)
    finally:
        logger.removeHandler(handler)
    printed = stream.getvalue()
    assert FAKE_KEY not in printed
    assert f"Job failed ({REDACTED})" in printed and f"ValueError: bad notes: {REDACTED}" in printed


def test_a_key_without_network_stops_with_a_message(wandb_env, monkeypatch, tmp_path: Path) -> None:
    import wandb
    from wandb.errors import CommError

    wandb_env(WANDB_API_KEY=FAKE_KEY)

    def unreachable(**kwargs):
        assert kwargs.get("mode") is None, "with a key, W&B decides (online)"
        raise CommError("Timed out while retrying: dial tcp: no such host\nConsider increasing the init_timeout")

    monkeypatch.setattr(wandb, "init", unreachable)
    logger = WandbLogger(save_dir=str(tmp_path), project="p")
    with pytest.raises(
        ConfigError, match=r"could not reach its server \(Timed out .* no such host\): .*WANDB_MODE=offline"
    ):
        logger.experiment  # noqa: B018 (the property starts the run)
