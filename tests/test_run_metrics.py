import pytest
import torch

from wrncifar.config_validation import ConfigError
from wrncifar.run_metrics import metrics_as_floats, optimized_metric_value


def test_metrics_become_plain_floats() -> None:
    metrics = metrics_as_floats({"val/acc": torch.tensor(0.25), "epoch": 3, "note": "text"})
    assert metrics == {"val/acc": 0.25, "epoch": 3.0}
    assert all(type(v) is float for v in metrics.values())


def test_optimized_metric_is_read_or_named_as_missing() -> None:
    assert optimized_metric_value({"val/acc_best": 0.5}, "val/acc_best") == 0.5
    assert optimized_metric_value({"val/acc_best": 0.5}, None) is None
    with pytest.raises(ConfigError, match="optimized_metric 'val/f1' was not logged; logged metrics: val/acc_best"):
        optimized_metric_value({"val/acc_best": 0.5}, "val/f1")
