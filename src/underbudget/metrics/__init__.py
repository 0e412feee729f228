"""Metrics: classification, calibration (ECE, NLL, Brier, temperature scaling) and anytime (CER).

Every metric is computed over a whole evaluation set; pass one tensor or a list of per-batch
tensors. See each module's docstring for the exact definitions.
"""

from underbudget.metrics._inputs import MetricInputError
from underbudget.metrics.anytime import anytime_error, anytime_summary, cer_count, cer_rate
from underbudget.metrics.calibration import (
    adaptive_ece,
    adaptive_ece_from_confidences,
    bin_edges,
    brier,
    calibration_before_after,
    calibration_report,
    confidence_stats,
    ece,
    ece_from_confidences,
    legacy_bin_edges,
    mce,
    mce_from_confidences,
    nll,
    nll_from_logits,
    reliability_data,
    reliability_from_confidences,
)
from underbudget.metrics.classification import (
    accuracy,
    confusion_matrix,
    error_count,
    per_class_accuracy,
    topk_accuracy,
)
from underbudget.metrics.reliability_plot import plot_reliability
from underbudget.metrics.temperature import TemperatureScaler, fit_temperature

__all__ = [
    "MetricInputError",
    "TemperatureScaler",
    "accuracy",
    "adaptive_ece",
    "adaptive_ece_from_confidences",
    "anytime_error",
    "anytime_summary",
    "bin_edges",
    "brier",
    "calibration_before_after",
    "calibration_report",
    "cer_count",
    "cer_rate",
    "confidence_stats",
    "confusion_matrix",
    "ece",
    "ece_from_confidences",
    "error_count",
    "fit_temperature",
    "legacy_bin_edges",
    "mce",
    "mce_from_confidences",
    "nll",
    "nll_from_logits",
    "per_class_accuracy",
    "plot_reliability",
    "reliability_data",
    "reliability_from_confidences",
    "topk_accuracy",
]
