"""Evaluate a checkpoint on the test set from a composed Hydra config."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from omegaconf import DictConfig, OmegaConf, open_dict

from wrncifar.analysis.evaluation_report import PREDICTIONS_FILE, REPORT_FILE, build_report, write_report
from wrncifar.analysis.output_files import check_output_folder, output_folder
from wrncifar.analysis.predictions import TTA, predict
from wrncifar.analysis.report_plots import FIGURES, save_report_plots
from wrncifar.callbacks.progress_bar import console_progress
from wrncifar.run.checkpoints import (
    check_checkpoint_path,
    check_compatible,
    is_lightning_checkpoint,
    load_network_weights,
    read_checkpoint_file,
)
from wrncifar.run.config_validation import ConfigError, check_num_classes, validate_config
from wrncifar.run.console import quiet_console
from wrncifar.run.extras import apply_extras
from wrncifar.run.fit_and_test import instantiate_group, metrics_as_floats
from wrncifar.run.speed import resolve_speed
from wrncifar.run.training_run import RUN_GROUPS, SAVED_CONFIG, run_folder_of, training_run_config
from wrncifar.run.trusted_targets import check_targets
from wrncifar.sweeps.api_key import redacted

log = logging.getLogger(__name__)

# The files of an evaluation report (`write_report`, and `save_report_plots` per prediction mode, plain and flip):
# an earlier report is replaced, anything else in its folder refused.
REPORT_FILES = frozenset(
    {REPORT_FILE, PREDICTIONS_FILE}
    | {f"{name}.png" if mode == "plain" else f"{name}_{mode}.png" for name in FIGURES for mode in ("plain", "flip")}
)
# Keys every `report.json` this module writes has: how an earlier report is told from a file of the user's own.
REPORT_KEYS = ("ckpt_path", "tta", "data", "test_images", "classes", "results")
REPORT_MAX_BYTES = 1 << 28  # a 100-class report with flip TTA is well under a megabyte; a larger .json is not one
# What file browsers leave in a folder they showed (macOS Finder, Windows Explorer): neither a report's nor the user's.
FOLDER_METADATA = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class ReportSettings:
    """The `eval` node of eval.yaml.

    Args:
        report: write the evaluation report after testing.
        tta: "flip" adds horizontal-flip test-time augmentation, reported beside the plain result.
        report_dir: where to write it; None: `<run_dir>/eval_report/<checkpoint name>/` next to the training run.
            An earlier report there is replaced, a folder with other files refused (`earlier_report`).
    """

    report: bool = True
    tta: TTA = "none"
    report_dir: str | None = None


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test `cfg.ckpt_path`; writes `test_metrics.json` to the output directory and returns the metrics.

    With `eval.report` (the default) it also writes the evaluation report (see `write_evaluation_report`).
    """
    given = cfg.get("ckpt_path")
    if not given:
        raise ConfigError("ckpt_path is required: python src/eval.py ckpt_path=<run_dir>/checkpoints/<name>.ckpt")
    ckpt_path = Path(str(given))
    check_checkpoint_path(ckpt_path, training=False)
    adopt_training_run_config(cfg, ckpt_path)
    quiet_console(evaluation=True)
    resolve_speed(cfg, training=False)
    validate_config(cfg, {"eval": ReportSettings})
    apply_extras(cfg)  # the config tree is printed once it is known to be valid: an error comes first
    settings = ReportSettings(**cfg.get("eval", {}))
    # Before testing: a folder that is refused should not wait for the test, and nothing is written.
    report_dir = report_directory(settings.report_dir, ckpt_path, Path(cfg.paths.output_dir))
    run_dir = run_folder_of(ckpt_path, SAVED_CONFIG)
    within = run_dir if run_dir and not settings.report_dir else report_dir.parent
    if settings.report:
        check_output_folder(report_dir, within)
    earlier = earlier_report(report_dir) if settings.report else []

    datamodule: LightningDataModule = instantiate(cfg.data)
    model: LightningModule = instantiate(cfg.model)
    check_num_classes(model, datamodule)
    # The console's progress as in training (plain lines where the console is a file); no checkpoint callback,
    # whose state restored from a training checkpoint only warns about the folder it was saved in.
    trainer: Trainer = instantiate(
        cfg.trainer,
        logger=instantiate_group(cfg.get("logger")) or False,
        callbacks=[console_progress()],
        enable_checkpointing=False,
    )
    if settings.report and trainer.world_size > 1:
        raise ConfigError(
            f"the evaluation report runs in one process, but the trainer has {trainer.world_size}: "
            "evaluate on one device (trainer.devices=1) or turn the report off (eval.report=false)"
        )
    checkpoint = read_checkpoint_file(ckpt_path)
    if is_lightning_checkpoint(checkpoint):
        check_compatible(model, checkpoint, ckpt_path)
        trainer.test(model, datamodule=datamodule, ckpt_path=str(ckpt_path), weights_only=True)
    else:  # plain network weights: the seed's own code, a plain PyTorch loop
        load_network_weights(model.net, ckpt_path)
        log.info("%s holds plain network weights: testing them in the configured model", ckpt_path)
        trainer.test(model, datamodule=datamodule)

    metrics = metrics_as_floats(trainer.callback_metrics)
    out = Path(cfg.paths.output_dir) / "test_metrics.json"
    out.write_text(json.dumps({"ckpt_path": redacted(str(ckpt_path.resolve())), **metrics}, indent=2) + "\n")
    log.info("Test metrics written to %s", out)
    if settings.report:
        output_folder(report_dir, within)
        if earlier:  # removed, not only overwritten: a plain report must not keep an earlier report's flip plots
            log.info("Replacing the evaluation report in %s, written by an earlier run of eval.py", report_dir)
            for path in earlier:
                path.unlink(missing_ok=True)
        write_evaluation_report(trainer, model, datamodule, settings.tta, ckpt_path, cfg.data, report_dir)
    return metrics


def write_evaluation_report(
    trainer: Trainer,
    model: LightningModule,
    datamodule: LightningDataModule,
    tta: TTA,
    ckpt_path: Path,
    data_cfg: DictConfig,
    report_dir: Path,
) -> Path:
    """`report.json`, `predictions.npz` and the PNG plots of the tested model (it holds the checkpoint's weights
    once `trainer.test` has run) on the test set, with the trainer's device and precision; returns the JSON's path.
    """
    model.to(trainer.strategy.root_device)
    predictions = predict(model, datamodule.test_dataloader(), tta, trainer.precision_plugin.forward_context)
    # The data it was tested on, resolved: enough to rebuild the test images (the notebook's gallery). A relative
    # data_dir is relative to where eval.py ran, so it is made absolute.
    data: dict = OmegaConf.to_container(data_cfg, resolve=True)  # type: ignore[assignment]
    if data.get("data_dir"):
        data["data_dir"] = str(Path(data["data_dir"]).resolve())
    report = {
        "ckpt_path": str(ckpt_path.resolve()),
        "tta": tta,
        "data": data,
        **build_report(
            predictions,
            getattr(datamodule, "classes", ()),
            getattr(datamodule, "superclasses", ()),
            getattr(datamodule, "fine_to_coarse", ()),
        ),
    }
    path = write_report(report, predictions, report_dir)
    save_report_plots(report, report_dir)
    log.info("Evaluation report (top-1 %.4f) written to %s", report["results"]["plain"]["top1"], report_dir)
    return path


def report_directory(given: str | None, ckpt_path: Path, output_dir: Path) -> Path:
    """`given`, else `<run_dir>/eval_report/<checkpoint name>/` beside the training run (this run's output
    directory when the checkpoint is not inside one)."""
    if given:
        return Path(given)
    return (run_folder_of(ckpt_path, SAVED_CONFIG) or output_dir) / "eval_report" / ckpt_path.stem


def earlier_report(folder: Path) -> list[Path]:
    """The files of an earlier evaluation report in `folder` (none where it is missing or empty), which the new
    report replaces. ConfigError, naming them, when the folder holds anything else, or files named as a report's
    beside a `report.json` that eval did not write: a user's files are neither replaced nor mixed with a report."""
    if folder.is_symlink() or not folder.is_dir():
        return []  # `output_folder` refuses a link or a file by name
    entries = sorted(folder.iterdir())
    own = [p for p in entries if p.is_file() and not p.is_symlink() and report_file_name(p.name)]
    if not written_by_eval(folder / REPORT_FILE):
        own = [p for p in own if p.name not in REPORT_FILES]  # a killed write's temporaries are still eval's
    others = [p.name for p in entries if p not in own and p.name not in FOLDER_METADATA]
    if others:
        shown = ", ".join(others[:4]) + (f", … ({len(others)} in all)" if len(others) > 4 else "")
        raise ConfigError(
            f"the report folder {folder} holds files that are not an earlier evaluation report ({shown}), so it was "
            "left as it is and nothing was evaluated: remove them, or give another folder with eval.report_dir=…"
        )
    return own


def report_file_name(name: str) -> bool:
    """Whether `name` is one of `REPORT_FILES`, or a temporary file of one that a killed write left (`write_file`
    writes `.<name>.<random><suffix>` beside it)."""
    return name in REPORT_FILES or any(
        name.startswith(f".{file}.") and name.endswith(Path(file).suffix) for file in REPORT_FILES
    )


def written_by_eval(path: Path) -> bool:
    """Whether `path` is a `report.json` that `write_evaluation_report` wrote: a JSON object with `REPORT_KEYS`."""
    try:
        if path.is_symlink() or path.stat().st_size > REPORT_MAX_BYTES:
            return False
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(report, dict) and all(key in report for key in REPORT_KEYS)


def adopt_training_run_config(cfg: DictConfig, ckpt_path: Path) -> None:
    """Use the training run's `model` and `data` configs, then re-apply this command line's overrides of them.

    `model=…` / `data=…` on this command line keep this config's choice; `data.eval_batch_size=64` and the like
    are applied on top of the run's config. The run's saved config is untrusted data: one that cannot be read,
    whose group is not a config, or whose values cannot be resolved here (`${oc.env:…}` of a variable set on the
    machine the run trained on) is a ConfigError naming the file and how to go on.
    """
    run_dir = run_folder_of(ckpt_path, SAVED_CONFIG)
    if run_dir is None:
        return
    saved = run_dir / ".hydra" / SAVED_CONFIG
    overrides = OverridesParser.create().parse_overrides(
        list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    )
    groups = [g for g in RUN_GROUPS if not any(o.key_or_group == g for o in overrides)]
    if not groups:
        return
    given = " and ".join(f"{g}=…" for g in groups)
    instead = f"or give {given} on the command line to use this command's own configs"
    try:
        run_cfg = training_run_config(ckpt_path)
    except Exception as err:  # any damage to the file: YAML, OmegaConf or encoding errors
        raise ConfigError(
            f"the training run's saved config {saved} cannot be read ({type(err).__name__}: {_first_line(err)}): "
            f"repair it, {instead}"
        ) from err
    for group in groups:
        if group not in run_cfg:
            continue
        if not isinstance(run_cfg[group], DictConfig):
            raise ConfigError(
                f"the training run's saved config {saved} has a {group} that is not a config "
                f"({type(run_cfg[group]).__name__}): repair it, {instead}"
            )
        check_targets(OmegaConf.to_container(run_cfg[group]), group, saved)
        with open_dict(cfg):
            cfg[group] = run_cfg[group]
            for o in overrides:
                if o.key_or_group.startswith(f"{group}.") and not o.is_delete():
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
        try:  # here, where this command's overrides of its values apply, rather than when it is first used
            OmegaConf.to_container(cfg[group], resolve=True)
        except Exception as err:  # OmegaConf's interpolation and resolver errors
            where = getattr(err, "full_key", None) or group
            raise ConfigError(
                f"{where} of the training run's saved config {saved} cannot be resolved here "
                f"({_first_line(err)}): give its value on the command line ({where}=…), {instead}"
            ) from err
        log.info("Using the %s config of the training run that wrote %s", group, ckpt_path)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
