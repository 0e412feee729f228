"""Calibration metrics against hand-worked numbers, torchmetrics, sklearn and brute force."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from sklearn.metrics import log_loss
from torchmetrics.classification import MulticlassCalibrationError

from underbudget.metrics import (
    MetricInputError,
    TemperatureScaler,
    accuracy,
    adaptive_ece,
    adaptive_ece_from_confidences,
    brier,
    calibration_before_after,
    calibration_report,
    confidence_stats,
    ece,
    ece_from_confidences,
    fit_temperature,
    legacy_bin_edges,
    mce,
    mce_from_confidences,
    nll,
    nll_from_logits,
    plot_reliability,
    reliability_data,
    reliability_from_confidences,
)

# Five equal-width bins: [0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1].
HAND_CONF = [0.0, 0.2, 0.3, 0.4, 0.5, 0.9, 1.0, 1.0]
HAND_CORRECT = [0, 1, 0, 1, 1, 1, 1, 0]
# bin 0: {0.0 wrong, 0.2 right}       |1 - 0.2| = 0.8, gap 0.4
# bin 1: {0.3 wrong, 0.4 right}       |1 - 0.7| = 0.3, gap 0.15
# bin 2: {0.5 right}                  |1 - 0.5| = 0.5, gap 0.5
# bin 3: empty
# bin 4: {0.9 right, 1.0 right, 1.0 wrong}  |2 - 2.9| = 0.9, gap 0.3
HAND_ECE = (0.8 + 0.3 + 0.5 + 0.9) / 8
HAND_MCE = 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_mce_hand_example_with_zero_and_one(dtype):
    conf = torch.tensor(HAND_CONF, dtype=dtype)
    correct = torch.tensor(HAND_CORRECT, dtype=torch.bool)
    assert ece_from_confidences(conf, correct, n_bins=5) == pytest.approx(HAND_ECE, abs=1e-7)
    assert mce_from_confidences(conf, correct, n_bins=5) == pytest.approx(HAND_MCE, abs=1e-7)
    rows = reliability_from_confidences(conf, correct, n_bins=5)
    assert [r["count"] for r in rows] == [2, 2, 1, 0, 3]  # 1.0 lands in the last bin
    assert [r["lo"] for r in rows] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert rows[3]["confidence"] is None and rows[3]["accuracy"] is None
    assert rows[4]["accuracy"] == pytest.approx(2 / 3)
    assert rows[4]["confidence"] == pytest.approx(2.9 / 3, abs=1e-7)


def test_legacy_binning_differs_on_a_float32_edge_hand_worked_and_torchmetrics():
    # float32 binary probabilities: top-label confidences 0.6 (right) and 0.55 (wrong), 15 bins.
    probs = torch.tensor([[0.6, 0.4], [0.45, 0.55]])
    labels = torch.tensor([0, 0])
    # default: 0.6 sits exactly on the edge 9/15, so both lie in (8/15, 9/15]:
    #   ECE = |1 - (0.6 + 0.55)| / 2 = 0.075
    assert ece(probs, labels, n_bins=15) == pytest.approx(0.075, abs=1e-6)
    # legacy (Guo et al.): the float32 linspace edge is 0.59999996 < 0.6, so 0.6 moves up to
    # (0.59999996, 0.6667]: ECE = (|0 - 0.55| + |1 - 0.6|) / 2 = 0.475
    edges = legacy_bin_edges(15)
    assert float(edges[9]) < float(torch.tensor(0.6)) < float(edges[10])
    assert ece(probs, labels, n_bins=15, binning="legacy") == pytest.approx(0.475, abs=1e-6)
    assert mce(probs, labels, n_bins=15, binning="legacy") == pytest.approx(0.55, abs=1e-6)
    rows = reliability_data(probs, labels, n_bins=15, binning="legacy")
    assert [r["count"] for r in rows][8:10] == [1, 1]
    # torchmetrics bins on the same float32 linspace edges ([lo, hi)), so here it agrees
    # with the legacy binning and not with the default
    ref = MulticlassCalibrationError(num_classes=2, n_bins=15, norm="l1")
    assert float(ref(probs, labels)) == pytest.approx(0.475, abs=1e-6)
    report = calibration_report(torch.log(probs), labels, n_bins=15, binning="legacy")
    assert report["binning"] == "legacy" and report["ece"] == pytest.approx(0.475, abs=1e-6)


def test_legacy_binning_leaves_a_zero_confidence_out_of_every_bin():
    conf, correct = [0.0, 0.5], [1, 1]
    # default: both in [0, 0.5]: |2 - 0.5| / 2 = 0.75. Legacy: 0 is in no bin but counts in N:
    # |1 - 0.5| / 2 = 0.25
    assert ece_from_confidences(conf, correct, n_bins=2) == pytest.approx(0.75)
    assert ece_from_confidences(conf, correct, n_bins=2, binning="legacy") == pytest.approx(0.25)
    assert mce_from_confidences([0.0], [1], n_bins=2, binning="legacy") == 0.0
    with pytest.raises(MetricInputError, match="legacy"):
        ece_from_confidences(conf, correct, binning="guo")


def test_legacy_and_default_binning_agree_away_from_the_edges():
    logits, probs, labels = _random_probs()
    for n_bins in (10, 15):
        assert ece(probs, labels, n_bins, binning="legacy") == pytest.approx(
            ece(probs, labels, n_bins), abs=1e-12
        )


def test_ece_from_probabilities_hits_exact_one():
    # Top-label confidences 1.0, 1.0, 0.5, 0.6 for binary probabilities.
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.6]])
    labels = torch.tensor([0, 0, 1, 1])  # right, wrong, wrong (argmax 0), right
    # bins of 5: the two 1.0 in bin 4 (|1 - 2| = 1), 0.5 and 0.6 in bin 2 (|1 - 1.1| = 0.1)
    assert ece(probs, labels, n_bins=5) == pytest.approx((1.0 + 0.1) / 4)
    assert mce(probs, labels, n_bins=5) == pytest.approx(0.5)
    assert sum(r["count"] for r in reliability_data(probs, labels, n_bins=5)) == 4


def _random_probs(n=3000, c=10, seed=0):
    """Under-confident at low confidence, over-confident at high: gaps of both signs."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    half = n // 2
    logits[:half] *= 0.4  # low confidence, but always right
    labels[:half] = logits[:half].argmax(dim=1)
    logits[half:] *= 3.0  # high confidence, right only by chance
    perm = torch.randperm(n, generator=g)
    logits, labels = logits[perm], labels[perm]
    return logits, logits.softmax(dim=1), labels


@pytest.mark.parametrize("n_bins", [10, 15])
def test_matches_torchmetrics_away_from_one(n_bins):
    logits, probs, labels = _random_probs()
    assert float(probs.max()) < 1.0
    for norm, ours in (("l1", ece), ("max", mce)):
        ref = MulticlassCalibrationError(num_classes=10, n_bins=n_bins, norm=norm)
        assert ours(probs, labels, n_bins) == pytest.approx(float(ref(probs, labels)), abs=1e-5)


def test_whole_set_is_batch_size_invariant_and_per_batch_mean_is_not():
    logits, labels = _overconfident(n=1000, seed=1, scale=1.0)  # a calibrated model
    probs = logits.softmax(dim=1)
    whole = ece(probs, labels)
    for size in (1000, 256, 100, 7):
        chunks, label_chunks = list(probs.split(size)), list(labels.split(size))
        assert ece(chunks, label_chunks) == pytest.approx(whole, abs=1e-12)
        assert adaptive_ece(chunks, label_chunks) == pytest.approx(adaptive_ece(probs, labels))
    # few samples per bin inflate each batch's ECE: the batch mean is about three times larger
    per_batch = [ece(p, y) for p, y in zip(probs.split(100), labels.split(100))]
    assert sum(per_batch) / len(per_batch) > whole + 0.03


def test_adaptive_bins_hold_equal_counts():
    _, probs, labels = _random_probs(n=1003, seed=2)
    rows = reliability_data(probs, labels, n_bins=15, scheme="mass")
    counts = [r["count"] for r in rows]
    assert sum(counts) == 1003 and max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True)  # larger groups first
    # bins are consecutive runs of the sorted confidences
    assert all(a["hi"] <= b["lo"] for a, b in zip(rows, rows[1:]))
    # adaptive ECE equals the count-weighted gap over these bins (independent brute force)
    conf, pred = probs.double().max(dim=1)
    ok = (pred == labels).double()
    order = torch.argsort(conf, stable=True)
    brute = sum(
        abs(float(ok[g].sum() - conf[g].sum())) for g in torch.tensor_split(order, 15)
    ) / len(conf)
    assert adaptive_ece(probs, labels) == pytest.approx(brute, abs=1e-12)


def test_adaptive_ece_hand_example():
    conf = [0.1, 0.9, 0.3, 0.8, 0.2]
    correct = [0, 1, 1, 1, 0]
    # sorted: 0.1(0) 0.2(0) 0.3(1) | 0.8(1) 0.9(1) with 2 bins of sizes 3, 2
    expected = (abs(1 - 0.6) + abs(2 - 1.7)) / 5
    assert adaptive_ece_from_confidences(conf, correct, n_bins=2) == pytest.approx(expected)
    # more bins than samples: one sample per bin, empty bins ignored
    assert adaptive_ece_from_confidences(conf, correct, n_bins=8) == pytest.approx(
        sum(abs(k - c) for c, k in zip(conf, correct)) / 5
    )


def test_nll_and_brier_hand_examples():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    labels = torch.tensor([0, 2])
    # Brier: (0.3^2 + 0.2^2 + 0.1^2 + 0.1^2 + 0.6^2 + 0.7^2) / 2 = (0.14 + 0.86) / 2
    assert brier(probs, labels) == pytest.approx(0.5)
    assert nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert brier(torch.tensor([[0.0, 1.0]]), torch.tensor([0])) == pytest.approx(2.0)
    # a probability that underflowed to 0 is clamped, not infinite
    assert nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(-math.log(1e-12))


def test_nll_from_logits_matches_sklearn():
    logits, probs, labels = _random_probs(n=500, c=6, seed=4)
    ref = log_loss(labels.numpy(), logits.double().softmax(1).numpy(), labels=list(range(6)))
    assert nll_from_logits(logits, labels) == pytest.approx(ref, rel=1e-6)
    assert nll(probs, labels) == pytest.approx(ref, rel=1e-5)


def test_confidence_stats_hand_example():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 0])  # right (0.9), wrong (0.8), right (0.6)
    stats = confidence_stats(probs, labels)
    assert stats["mean_conf"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert stats["mean_conf_correct"] == pytest.approx(0.75)
    assert stats["mean_conf_incorrect"] == pytest.approx(0.8)
    assert stats["accuracy"] == pytest.approx(2 / 3)
    assert confidence_stats(probs, torch.tensor([0, 1, 0]))["mean_conf_incorrect"] is None


def test_calibration_report_from_logits():
    logits, probs, labels = _random_probs(n=800, seed=5)
    rep = calibration_report(logits, labels)
    p64 = logits.double().softmax(dim=1)
    assert rep["ece"] == pytest.approx(ece(p64, labels), abs=1e-12)
    assert rep["ece"] == pytest.approx(ece(probs, labels), abs=1e-6)
    assert rep["mce"] == pytest.approx(mce(p64, labels), abs=1e-12)
    assert rep["adaptive_ece"] == pytest.approx(adaptive_ece(p64, labels), abs=1e-12)
    assert rep["nll"] == pytest.approx(nll_from_logits(logits, labels), abs=1e-12)
    assert rep["brier"] == pytest.approx(brier(p64, labels), abs=1e-12)
    assert rep["accuracy"] == accuracy(logits, labels)
    assert rep["errors"] == round((1 - rep["accuracy"]) * 800)
    assert len(rep["reliability"]) == 15 and sum(r["count"] for r in rep["reliability"]) == 800
    json.dumps(rep, allow_nan=False)  # plain JSON: empty bins are None, never NaN
    scaled = calibration_report(logits, labels, temperature=2.0)
    assert scaled["ece"] == pytest.approx(ece((logits.double() / 2).softmax(1), labels))


def test_probability_functions_reject_logits_and_report_rejects_probs():
    logits, probs, labels = _random_probs(n=50, seed=6)
    for fn in (ece, mce, adaptive_ece, nll, brier, confidence_stats):
        with pytest.raises(MetricInputError, match="softmax"):
            fn(logits, labels)
    with pytest.raises(MetricInputError, match="look like probabilities"):
        calibration_report(probs, labels)
    with pytest.raises(MetricInputError, match="must lie in"):
        ece_from_confidences([1.2, 0.5], [1, 0])
    with pytest.raises(MetricInputError, match="n_bins"):
        ece(probs, labels, n_bins=0)


def _overconfident(n=4000, c=5, seed=7, scale=5.0):
    """Labels drawn from softmax(z): calibrated at T = 1, so z * scale is over-confident."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 1.5
    labels = torch.multinomial(z.softmax(dim=1), 1, generator=g).squeeze(1)
    return (z * scale).double(), labels


def test_temperature_scaling_fixes_overconfidence():
    logits, labels = _overconfident()
    scaler = TemperatureScaler()
    t = scaler.fit(logits, labels)
    assert t > 1.0
    assert t == pytest.approx(5.0, rel=0.1)  # recovers the scale we applied
    scaled = scaler.transform(logits)
    assert torch.equal(scaled.argmax(1), logits.argmax(1))
    assert accuracy(scaled, labels) == accuracy(logits, labels)
    before, after = calibration_report(logits, labels), calibration_report(scaled, labels)
    assert after["nll"] < before["nll"] - 0.1
    assert after["ece"] < before["ece"]


def test_fitted_temperature_is_the_nll_minimum():
    logits, labels = _overconfident(n=1500, c=4, seed=8, scale=3.0)
    t = fit_temperature(logits, labels)
    # brute force: NLL on a fine log-spaced grid of temperatures, all at once
    grid = torch.exp(torch.linspace(math.log(0.5), math.log(20.0), 2001, dtype=torch.float64))
    logp = (logits[None] / grid[:, None, None]).log_softmax(dim=2)
    grid_nll = -logp.gather(2, labels[None, :, None].expand(len(grid), -1, 1)).mean(dim=(1, 2))
    best = float(grid[int(grid_nll.argmin())])
    assert t == pytest.approx(best, rel=2e-3)
    assert nll_from_logits(logits / t, labels) <= float(grid_nll.min()) + 1e-12
    # independent optimiser: LBFGS on log T
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t],
        lr=1.0,
        max_iter=200,
        tolerance_change=1e-15,
        tolerance_grad=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    assert t == pytest.approx(float(log_t.detach().exp()), rel=1e-5)
    assert fit_temperature(logits, labels) == t  # deterministic


def test_temperature_edge_cases():
    labels = torch.tensor([0, 1, 2])
    separable = torch.eye(3, dtype=torch.float64) * 10
    assert fit_temperature(separable, labels) == pytest.approx(0.01)  # optimum below the bound
    assert fit_temperature(torch.zeros(3, 3), labels) == 1.0  # nothing to rescale
    with pytest.raises(MetricInputError, match="call fit"):
        TemperatureScaler().transform(separable)
    assert torch.equal(TemperatureScaler(2.0)(separable), separable / 2)


def test_before_after_fits_on_validation_only():
    val_logits, val_labels = _overconfident(n=2000, seed=9)
    test_logits, test_labels = _overconfident(n=2000, seed=10)
    out = calibration_before_after(val_logits, val_labels, test_logits, test_labels)
    assert out["temperature"] == fit_temperature(val_logits, val_labels)
    assert out["temperature"] != fit_temperature(test_logits, test_labels)
    assert out["after"]["temperature"] == out["temperature"]
    assert out["after"]["nll"] < out["before"]["nll"]
    assert out["after"]["accuracy"] == out["before"]["accuracy"]


def test_reliability_png_written(tmp_path):
    logits, labels = _overconfident(n=500, seed=11)
    dense = calibration_report(logits, labels)
    compressed = calibration_report(logits / 5, labels)
    one = plot_reliability(dense["reliability"], tmp_path / "one.png", title="dense")
    two = plot_reliability(
        {"dense": dense, "compressed": compressed}, tmp_path / "sub" / "two.png", title="cmp"
    )
    rows = reliability_data(logits.softmax(1), labels, scheme="mass")
    three = plot_reliability({"mass": rows}, tmp_path / "mass.png")
    for path in (one, two, three):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(one) as a, Image.open(two) as b:
        assert b.size[0] > 1.5 * a.size[0]  # two panels side by side
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mass.png", "one.png", "sub", "two.png"]
    with pytest.raises(MetricInputError, match="reliability_data"):
        plot_reliability({"x": 3}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
