"""Calibration metrics, each with one written-down definition.

Notation: N samples, C classes, ``p_i`` the predicted probability vector of sample i,
``conf_i = max_c p_ic`` its top-label confidence, ``pred_i = argmax_c p_ic`` (ties to the lowest
index) and ``correct_i = [pred_i == y_i]``.

Equal-width bins (``scheme="width"``, used by ECE and MCE): bin ``b`` of ``n`` covers
``(b/n, (b+1)/n]`` for ``b = 0 .. n-1``, except that bin 0 also holds 0, i.e. it is ``[0, 1/n]``.
Every bin is closed on the right, so the last bin ``((n-1)/n, 1]`` holds a confidence of exactly
1.0 (there is no phantom bin past 1). The edges ``k/n`` are rounded to the floating dtype of the
confidences before comparing, so a float32 confidence written as ``0.2`` sits on the edge 0.2.

Legacy equal-width bins (``binning="legacy"``): the binning of the reference code of Guo et al.
(2017), which most published ECE tables used. Bin ``b`` is ``(e_b, e_{b+1}]`` with edges
``e = torch.linspace(0, 1, n + 1)`` computed in float32 (compared as float64). Two differences
from the default follow: a confidence of exactly 0 lies in no bin (it still counts in N), and
the float32 edges are not ``k/n`` rounded: for 15 bins the edge 9/15 is 0.59999996, below
float32(0.6), so a float32 confidence of exactly 0.6 falls in ``(0.6, 0.667]`` instead of
``(0.533, 0.6]`` (the edges 3, 6..10 of 15 differ this way). Elsewhere the two binnings agree.
``binning`` applies to equal-width bins only.

Equal-mass bins (``scheme="mass"``, adaptive ECE): the confidences sorted ascending (stable
sort, so ties keep sample order) are cut into ``n`` consecutive groups whose sizes differ by at
most one, the larger groups first (``torch.tensor_split``). With fewer samples than bins the
surplus groups are empty.

With ``S_b`` the samples of bin b and ``|S_b|`` their count:

- ``ECE = sum_b |S_b| / N * |acc(S_b) - conf(S_b)|`` over all bins of the whole set,
  where ``acc`` and ``conf`` are the mean correctness and mean confidence of the bin;
- ``MCE = max_b |acc(S_b) - conf(S_b)|`` over non-empty bins;
- ``adaptive ECE`` is ECE on the equal-mass bins.

Metrics always cover the whole evaluation set: pass one tensor, or a list of per-batch tensors
which is concatenated. Averaging per-batch ECE is a different (and wrong) number.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from underbudget.metrics._inputs import (
    ArrayLike,
    MetricInputError,
    check_bins,
    check_labels,
    check_probs,
    check_scores,
    to_float64,
)
from underbudget.metrics.binning import (
    BINNINGS,
    bin_edges,
    bin_stats,
    check_binning,
    legacy_bin_edges,
)
from underbudget.metrics.reliability_plot import plot_reliability
from underbudget.metrics.temperature import TemperatureScaler, fit_temperature

__all__ = [
    "BINNINGS",
    "adaptive_ece",
    "adaptive_ece_from_confidences",
    "bin_edges",
    "brier",
    "calibration_before_after",
    "calibration_report",
    "confidence_stats",
    "ece",
    "ece_from_confidences",
    "fit_temperature",
    "legacy_bin_edges",
    "mce",
    "mce_from_confidences",
    "nll",
    "nll_from_logits",
    "plot_reliability",
    "reliability_data",
    "reliability_from_confidences",
    "TemperatureScaler",
]


def _ece_from_bins(count: Tensor, conf_sum: Tensor, correct_sum: Tensor, n: Tensor) -> float:
    # sum_b |S_b|/N * |acc_b - conf_b| == sum_b |sum_{S_b}(correct - conf)| / N
    return float((correct_sum - conf_sum).abs().sum() / n)


def ece_from_confidences(
    conf: ArrayLike, correct: ArrayLike, n_bins: int = 15, binning: str = "default"
) -> float:
    """ECE from top-label confidences in [0, 1] and 0/1 correctness (equal-width bins)."""
    fn = "ece_from_confidences"
    count, cs, ks, _, _, n = bin_stats(conf, correct, n_bins, "width", fn, binning)
    return _ece_from_bins(count, cs, ks, n)


def mce_from_confidences(
    conf: ArrayLike, correct: ArrayLike, n_bins: int = 15, binning: str = "default"
) -> float:
    """MCE: the largest |accuracy - confidence| over non-empty equal-width bins (0 if none)."""
    fn = "mce_from_confidences"
    count, cs, ks, _, _, _ = bin_stats(conf, correct, n_bins, "width", fn, binning)
    full = count > 0
    if not bool(full.any()):  # legacy binning with every confidence exactly 0
        return 0.0
    return float(((ks[full] - cs[full]) / count[full]).abs().max())


def adaptive_ece_from_confidences(conf: ArrayLike, correct: ArrayLike, n_bins: int = 15) -> float:
    """Adaptive ECE: ECE over equal-mass bins of the sorted confidences."""
    fn = "adaptive_ece_from_confidences"
    count, cs, ks, _, _, n = bin_stats(conf, correct, n_bins, "mass", fn)
    return _ece_from_bins(count, cs, ks, n)


def reliability_from_confidences(
    conf: ArrayLike,
    correct: ArrayLike,
    n_bins: int = 15,
    scheme: str = "width",
    binning: str = "default",
) -> list[dict[str, Any]]:
    """Per-bin ``{lo, hi, count, confidence, accuracy}`` for a reliability diagram.

    For equal-width bins ``lo``/``hi`` are the bin edges; for equal-mass bins they are the
    smallest and largest confidence in the bin. Empty bins have ``None`` for ``confidence``,
    ``accuracy`` (and for ``lo``/``hi`` with equal-mass bins).
    """
    count, cs, ks, lo, hi, _ = bin_stats(conf, correct, n_bins, scheme, "reliability_data", binning)
    rows = []
    for b in range(count.shape[0]):
        k = int(count[b])
        rows.append(
            {
                "lo": None if k == 0 and scheme == "mass" else float(lo[b]),
                "hi": None if k == 0 and scheme == "mass" else float(hi[b]),
                "count": k,
                "confidence": float(cs[b] / k) if k else None,
                "accuracy": float(ks[b] / k) if k else None,
            }
        )
    return rows


def _top_label(probs: ArrayLike, labels: ArrayLike, fn: str) -> tuple[Tensor, Tensor]:
    """Top-label confidences (in the probabilities' dtype) and correctness of checked probs."""
    p = check_probs(probs, fn)
    y = check_labels(labels, p.shape[0], fn, num_classes=p.shape[1]).to(p.device)
    conf, pred = p.max(dim=1)
    return conf, pred == y


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, binning: str = "default") -> float:
    """Expected calibration error of (N, C) probabilities, equal-width bins.

    ``binning="legacy"`` reproduces Guo et al. (2017)'s reference binning (module docstring).
    """
    conf, ok = _top_label(probs, labels, "ece")
    return ece_from_confidences(conf, ok, n_bins, binning)


def mce(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, binning: str = "default") -> float:
    """Maximum calibration error of (N, C) probabilities, equal-width bins."""
    conf, ok = _top_label(probs, labels, "mce")
    return mce_from_confidences(conf, ok, n_bins, binning)


def adaptive_ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """ECE over equal-mass bins (each bin holds N/n_bins samples, +-1)."""
    conf, ok = _top_label(probs, labels, "adaptive_ece")
    return adaptive_ece_from_confidences(conf, ok, n_bins)


def reliability_data(
    probs: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    scheme: str = "width",
    binning: str = "default",
) -> list[dict[str, Any]]:
    """Reliability rows of (N, C) probabilities; see :func:`reliability_from_confidences`."""
    conf, ok = _top_label(probs, labels, "reliability_data")
    return reliability_from_confidences(conf, ok, n_bins, scheme, binning)


def nll(probs: ArrayLike, labels: ArrayLike, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood ``-mean_i log max(p_{i,y_i}, eps)`` of probabilities.

    The clamp at ``eps`` keeps a probability that underflowed to 0 finite; it caps one sample's
    loss at ``-log(eps)`` (27.6 for 1e-12). Prefer :func:`nll_from_logits` when logits exist.
    """
    p = check_probs(probs, "nll")
    y = check_labels(labels, p.shape[0], "nll", num_classes=p.shape[1]).to(p.device)
    py = to_float64(p.gather(1, y[:, None]).squeeze(1))
    return float(-py.clamp_min(eps).log().mean())


def nll_from_logits(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood of softmax(logits), via log-softmax in float64 (no clamp)."""
    z = to_float64(check_scores(logits, "logits", "nll_from_logits"))
    y = check_labels(labels, z.shape[0], "nll_from_logits", num_classes=z.shape[1])
    return float(torch.nn.functional.cross_entropy(z, y.to(z.device)))


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score ``mean_i sum_c (p_ic - [c == y_i])^2``, in [0, 2].

    Summed over classes (not averaged), as in Brier (1950); a perfect one-hot prediction scores
    0 and a confidently wrong one 2.
    """
    p = to_float64(check_probs(probs, "brier"))
    y = check_labels(labels, p.shape[0], "brier", num_classes=p.shape[1]).to(p.device)
    py = p.gather(1, y[:, None]).squeeze(1)
    return float(((p * p).sum(dim=1) - 2.0 * py + 1.0).mean())


def confidence_stats(probs: ArrayLike, labels: ArrayLike) -> dict[str, float | None]:
    """Mean top-label confidence overall, on correct and on incorrect samples, and accuracy.

    A mean over an empty group (no correct or no incorrect sample) is ``None``.
    """
    conf, ok = _top_label(probs, labels, "confidence_stats")
    c = to_float64(conf)
    n_ok = int(ok.sum())
    n_bad = c.shape[0] - n_ok
    return {
        "mean_conf": float(c.mean()),
        "mean_conf_correct": float(c[ok].mean()) if n_ok else None,
        "mean_conf_incorrect": float(c[~ok].mean()) if n_bad else None,
        "accuracy": n_ok / c.shape[0],
    }


def _reject_probabilities(z: Tensor, fn: str) -> None:
    """Logits that are all in [0, 1] with rows summing to 1 are almost surely probabilities."""
    if z.shape[1] > 1 and float(z.min()) >= 0.0 and float(z.max()) <= 1.0:
        if float((to_float64(z).sum(dim=1) - 1.0).abs().max()) <= 1e-4:
            raise MetricInputError(
                f"{fn}: these look like probabilities (rows in [0, 1] summing to 1) but logits "
                "are expected; pass the raw model outputs, or call ece/nll/brier on probabilities"
            )


def calibration_report(
    logits: ArrayLike,
    labels: ArrayLike,
    n_bins: int = 15,
    temperature: float = 1.0,
    binning: str = "default",
) -> dict[str, Any]:
    """Every calibration metric of ``softmax(logits / temperature)`` over the whole set.

    ``binning`` chooses the equal-width bins of ECE, MCE and the reliability rows (``default``
    or ``legacy``). Returns ``n``, ``num_classes``, ``n_bins``, ``binning``, ``temperature``,
    ``accuracy``, ``errors``,
    ``ece``, ``mce``, ``adaptive_ece``, ``nll`` (from logits), ``brier``, ``mean_conf``,
    ``mean_conf_correct``, ``mean_conf_incorrect`` and ``reliability`` (equal-width bin rows).
    Softmax is taken in float64; metrics are never computed from raw logits.
    """
    fn = "calibration_report"
    n_bins = check_bins(n_bins, fn)
    check_binning(binning, fn)
    z = check_scores(logits, "logits", fn)
    _reject_probabilities(z, fn)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise MetricInputError(f"{fn}: temperature must be a positive number, got {temperature!r}")
    y = check_labels(labels, z.shape[0], fn, num_classes=z.shape[1])
    z = to_float64(z) / float(temperature)
    y = y.to(z.device)
    probs = z.softmax(dim=1)
    conf, pred = probs.max(dim=1)
    ok = pred == y
    stats = confidence_stats(probs, y)
    return {
        "n": int(z.shape[0]),
        "num_classes": int(z.shape[1]),
        "n_bins": int(n_bins),
        "binning": binning,
        "temperature": float(temperature),
        "accuracy": stats["accuracy"],
        "errors": int((~ok).sum()),
        "ece": ece_from_confidences(conf, ok, n_bins, binning),
        "mce": mce_from_confidences(conf, ok, n_bins, binning),
        "adaptive_ece": adaptive_ece_from_confidences(conf, ok, n_bins),
        "nll": float(torch.nn.functional.cross_entropy(z, y)),
        "brier": brier(probs, y),
        "mean_conf": stats["mean_conf"],
        "mean_conf_correct": stats["mean_conf_correct"],
        "mean_conf_incorrect": stats["mean_conf_incorrect"],
        "reliability": reliability_from_confidences(conf, ok, n_bins, binning=binning),
    }


def calibration_before_after(
    val_logits: ArrayLike,
    val_labels: ArrayLike,
    test_logits: ArrayLike,
    test_labels: ArrayLike,
    n_bins: int = 15,
    binning: str = "default",
) -> dict[str, Any]:
    """Fit a temperature on the validation split; report test metrics before and after.

    Returns ``{"temperature": T, "before": report, "after": report}``. The test split is never
    used to fit, so the "after" numbers are honest.
    """
    temperature = fit_temperature(val_logits, val_labels)
    return {
        "temperature": temperature,
        "before": calibration_report(test_logits, test_labels, n_bins, binning=binning),
        "after": calibration_report(
            test_logits, test_labels, n_bins, temperature=temperature, binning=binning
        ),
    }
