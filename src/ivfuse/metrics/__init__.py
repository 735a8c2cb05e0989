"""Fusion quality metrics, computed as the field's reference tools compute them.

>>> import ivfuse
>>> m = ivfuse.create_metric("qabf")
>>> m.lower_better
False

See ``docs/metrics.md`` for the table of metrics, their conventions and calibration sources.
"""

from . import gradient, information, perceptual, statistics, structural  # noqa: F401  (registration)
from .base import (
    DEFAULT_METRICS,
    METRICS,
    Metric,
    compute_metrics,
    create_metric,
    list_metrics,
    register_metric,
    to_gray255,
)
from .fast import compute_all

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "Metric",
    "compute_all",
    "compute_metrics",
    "create_metric",
    "list_metrics",
    "register_metric",
    "to_gray255",
]
