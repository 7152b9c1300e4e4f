"""Check a run before it starts: the composed config against the constructors it will call, before anything
is instantiated, and the instantiated model against the data.

YAML configs carry no types, so `data.batch_size=abc` would otherwise surface deep inside a DataLoader after
the dataset was read. Each node with a `_target_` is checked against the target's signature: unknown keys
and values of the wrong primitive type (int, float, bool, str, None, Literal choices, sequences of those)
are reported with their full config key. Types the checker does not understand are left to the target.
The top-level keys of `train.yaml` / `eval.yaml` are checked against `TOP_LEVEL`, plus the settings an entry
point reads from its own top-level node (eval.py's `eval`).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from wrncifar.data.cifar100 import MAX_SEED
from wrncifar.models.optimization import SCHEDULES_NEEDING_AN_END

if TYPE_CHECKING:
    from lightning.pytorch import LightningDataModule, LightningModule


class ConfigError(ValueError):
    """The composed config cannot work: the message names each offending key."""


# Types of the top-level keys of the entry configs (those without a `_target_` to read them from).
TOP_LEVEL: dict[str, Any] = {
    "task_name": str,
    "tags": list[str] | None,  # null or []: none (extras.enforce_tags asks for them)
    "train": bool,
    "test": bool,
    "ckpt_path": str | None,
    "init_from": str | None,
    "allow_oversubscription": bool,
    "distributed_start_timeout_s": float,
    "seed": int | None,
    "optimized_metric": str | None,
    "matmul_precision": Literal["highest", "high", "medium"] | None,
}


_UNCHECKED = object()


def validate_config(cfg: DictConfig, entry_settings: Mapping[str, type] | None = None) -> None:
    """Raise `ConfigError` listing every mistyped or unknown key of the config's instantiable nodes.

    `entry_settings`: top-level nodes the entry point reads into a dataclass (`{"eval": ReportSettings}`),
    checked field by field like a constructor's arguments.
    """
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    problems: list[str] = []
    top_level = {**TOP_LEVEL, **(entry_settings or {})}
    _check_fields({k: v for k, v in container.items() if k in top_level}, top_level, True, "", "", problems)
    _walk(container, "", problems)
    problems += _training_length_problems(container.get("trainer") or {})
    problems += _schedule_end_problems(container.get("trainer") or {}, container.get("model") or {})
    problems += _accelerator_problems(container.get("trainer") or {})
    problems += _seed_problems(container, "")
    timeout = container.get("distributed_start_timeout_s")
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout <= 0:
        problems.append(f"distributed_start_timeout_s: must be > 0 seconds, got {timeout}")
    if problems:
        raise ConfigError(
            "invalid config:\n  "
            + "\n  ".join(problems)
            + "\nFix these keys on the command line or in the config files."
        )


def _training_length_problems(trainer: Mapping[str, Any]) -> list[str]:
    """Lightning accepts max_epochs=0, max_steps=0 and limit_train_batches=0 and then trains nothing; here that is
    a mistake, said before any work."""
    problems = []
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    if isinstance(epochs, int) and epochs != -1 and epochs < 1 and steps in (None, -1):
        problems.append(f"trainer.max_epochs: must be >= 1 (or -1 with trainer.max_steps set), got {epochs}")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps == 0:
        problems.append("trainer.max_steps: 0 trains nothing; give a positive number of steps, or -1 for no limit")
    every = trainer.get("check_val_every_n_epoch")
    if isinstance(every, int) and not isinstance(every, bool) and every < 1:
        problems.append(f"trainer.check_val_every_n_epoch: must be >= 1 (or null to validate by steps), got {every}")
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int | float) and not isinstance(limit, bool) and limit == 0:
        problems.append("trainer.limit_train_batches: 0 trains nothing; give a count, a share in (0, 1], or null")
    return problems


def _schedule_end_problems(trainer: Mapping[str, Any], model: Mapping[str, Any]) -> list[str]:
    """A schedule that reaches its floor when training ends (cosine, onecycle) in a run that no epoch or step limit
    ends (time alone: trainer.max_time): said before anything is built. Lightning takes max_epochs=null for 1000
    epochs unless max_time is set."""
    scheduler = model.get("scheduler") if isinstance(model, Mapping) else None
    name = scheduler.get("name") if isinstance(scheduler, Mapping) else None
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    no_epoch_limit = epochs == -1 or (epochs is None and trainer.get("max_time") is not None)
    if name not in SCHEDULES_NEEDING_AN_END or not no_epoch_limit or steps not in (None, -1):
        return []
    as_set = "null" if epochs is None else epochs
    return [
        f"model.scheduler.name: {name} decays to its floor when training ends, but trainer.max_epochs={as_set} and "
        f"trainer.max_steps={steps} set no end (trainer.max_time stops a run at a step no schedule can foresee): set "
        "trainer.max_epochs or trainer.max_steps, or use a schedule that needs no end (model.scheduler.name=constant "
        "or multistep)"
    ]


def _seed_problems(node: Any, path: str) -> list[str]:
    """Every `seed` or `*_seed` key (`seed`, `data.split_seed`, the synthetic data's `data.seed`) out of the range
    the generators take: said with the key, before numpy's "expected non-negative integer" deep in a setup."""
    if not isinstance(node, Mapping):
        return []
    problems = []
    for key, value in node.items():
        key_path = f"{path}.{key}" if path else str(key)
        if isinstance(value, Mapping):
            problems += _seed_problems(value, key_path)
            continue
        is_seed = key == "seed" or str(key).endswith("_seed")
        if is_seed and isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_SEED:
            problems.append(f"{key_path}: a seed must be in 0 … {MAX_SEED}, got {value}")
    return problems


def _accelerator_problems(trainer: Mapping[str, Any]) -> list[str]:
    """A GPU asked for on a machine without one: said plainly, with what to use, before Lightning's own error."""
    accelerator = trainer.get("accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        on_a_mac = "; for this Mac's Apple GPU, trainer=mps" if torch.backends.mps.is_available() else ""
        return [
            f"trainer.accelerator: {accelerator}, but this machine has no CUDA GPU that torch {torch.__version__} "
            "can use: train on the CPU with trainer=cpu (or trainer.accelerator=auto, which picks a GPU when there "
            f"is one){on_a_mac}"
        ]
    if accelerator == "mps" and not torch.backends.mps.is_available():
        instead = "a CUDA GPU with trainer=gpu" if torch.cuda.is_available() else "the CPU with trainer=cpu"
        return [
            f"trainer.accelerator: mps, but this machine has no Apple GPU that torch {torch.__version__} can use "
            "(MPS needs Apple silicon, macOS 12.3 or later and a torch built with MPS): train on "
            f"{instead} (or trainer.accelerator=auto, which picks a GPU when there is one)"
        ]
    return []


def _walk(node: Any, path: str, problems: list[str]) -> None:
    if isinstance(node, Mapping):
        if "_target_" in node:
            _check_target(node, path, problems)
        for key, value in node.items():
            _walk(value, f"{path}.{key}" if path else str(key), problems)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, f"{path}[{i}]", problems)


def _check_target(node: Mapping[str, Any], path: str, problems: list[str]) -> None:
    try:
        target = get_object(node["_target_"])
    except Exception as err:  # noqa: BLE001 - any import failure means the same thing to the user
        problems.append(f"{path}._target_: cannot import {node['_target_']!r} ({err})")
        return
    hints, open_kwargs = _signature_hints(target)
    _check_fields(node, hints, open_kwargs, path, f"an argument of {node['_target_']}", problems)


def _check_fields(
    values: Mapping[str, Any], hints: dict[str, Any], open_kwargs: bool, path: str, owner: str, problems: list[str]
) -> None:
    for key, value in values.items():
        if key.startswith("_"):
            continue
        if key not in hints:
            if not open_kwargs:
                problems.append(f"{path}.{key}: not {owner} (known: {', '.join(sorted(hints))})")
            continue
        key_path = f"{path}.{key}" if path else key
        if isinstance(value, Mapping) and "_target_" in value:
            continue  # checked on its own by _walk
        settings = _settings_class(hints[key])
        if settings is not None and isinstance(value, Mapping):
            fields = typing.get_type_hints(settings)
            _check_fields(value, fields, False, key_path, f"a field of {settings.__name__}", problems)
            continue
        error = _type_error(value, hints[key])
        if error:
            problems.append(f"{key_path}: {error}")


def _settings_class(hint: Any) -> type | None:
    """The dataclass a mapping-valued argument is read into (`OptimizerSettings | Mapping`), if any."""
    candidates = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _signature_hints(target: Any) -> tuple[dict[str, Any], bool]:
    """Parameter name → annotation, following **kwargs up the class hierarchy."""
    hints: dict[str, Any] = {}
    functions = (
        [cls.__init__ for cls in target.__mro__ if "__init__" in vars(cls)] if inspect.isclass(target) else [target]
    )
    for function in functions:
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return hints, True
        try:
            annotations = typing.get_type_hints(function)
        except Exception:  # noqa: BLE001 - unresolvable annotations: accept any value for them
            annotations = {}
        has_kwargs = False
        for name, param in signature.parameters.items():
            if param.kind is param.VAR_KEYWORD:
                has_kwargs = True
            elif param.kind is not param.VAR_POSITIONAL and name != "self":
                hints.setdefault(name, annotations.get(name, _UNCHECKED))
        if not has_kwargs:
            return hints, False
    return hints, True


def _type_error(value: Any, hint: Any) -> str | None:
    """A description of why `value` does not fit `hint`, or None when it fits (or cannot be judged)."""
    if hint is _UNCHECKED or hint is Any:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        errors = [_type_error(value, arg) for arg in args]
        return None if any(e is None for e in errors) else f"expected {_describe(hint)}, got {value!r}"
    if origin is typing.Literal:
        return None if value in args else f"expected one of {list(args)}, got {value!r}"
    if hint is type(None):
        return None if value is None else f"expected null, got {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected a boolean (true/false), got {value!r}"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"expected an integer, got {value!r}"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r}"
    if hint is str or hint is Path:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return f"expected a list, got {value!r}"
        element = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else _UNCHECKED
        errors = [_type_error(v, element) for v in value]
        return next((f"element {i}: {e}" for i, e in enumerate(errors) if e), None)
    return None


def _describe(hint: Any) -> str:
    """`int | None` → "int or null"; Literal choices are listed."""
    names = []
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is typing.Literal:
            names.append(f"one of {list(typing.get_args(arg))}")
        else:
            names.append("null" if arg is type(None) else getattr(arg, "__name__", str(arg)))
    return " or ".join(names)


def check_num_classes(model: LightningModule, datamodule: LightningDataModule) -> None:
    """Fail before any data is read when the model's outputs and the dataset's classes disagree."""
    model_classes = model.hparams.get("num_classes")
    data_classes = getattr(datamodule, "num_classes", None)
    if model_classes and data_classes and model_classes != data_classes:
        raise ConfigError(
            f"the model predicts {model_classes} classes but the dataset has {data_classes}: "
            f"set model.net.num_classes={data_classes}"
        )
