"""The numbers a run reports: the trainer's logged metrics as floats, and the one a sweep optimises."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from wrncifar.config_validation import ConfigError

log = logging.getLogger(__name__)


def metrics_as_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """`trainer.callback_metrics` (tensors) as plain floats."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, torch.Tensor | int | float)}


def optimized_metric_value(metrics: Mapping[str, float], name: str | None) -> float | None:
    """The value a sweep optimises; a clear error when the run did not produce it."""
    if not name:
        return None
    if name not in metrics:
        raise ConfigError(f"optimized_metric {name!r} was not logged; logged metrics: {', '.join(sorted(metrics))}")
    value = metrics[name]
    log.info("%s = %s", name, value)
    return value
