"""Megabatch streams: partitions, per-megabatch validation, replay modes, reservoir buffer."""

from __future__ import annotations

import pytest
import torch

from underbudget.data import Replay, ReservoirBuffer, partition, replay_indices, split_megabatch
from underbudget.errors import ConfigError, DataError

LABELS = torch.cat([torch.full((n,), c) for c, n in enumerate([40, 17, 23, 5, 12])])  # N = 97


def test_partition_disjoint_covering_near_equal_reproducible():
    for T in (1, 3, 8, 97):
        parts = partition(LABELS, T, seed=0)
        assert len(parts) == T
        flat = torch.cat(parts)
        assert sorted(flat.tolist()) == list(range(97))  # disjoint and covering
        sizes = [p.numel() for p in parts]
        assert max(sizes) - min(sizes) <= 1
        assert all(torch.equal(p, p.sort().values) for p in parts)
    a, b, c = partition(LABELS, 5, 1), partition(LABELS, 5, 1), partition(LABELS, 5, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_class_balanced_partition_is_exact_per_class():
    for T in (2, 3, 4, 7, 10):
        parts = partition(LABELS, T, seed=T, class_balanced=True)
        assert sorted(torch.cat(parts).tolist()) == list(range(97))
        sizes = [p.numel() for p in parts]
        assert max(sizes) - min(sizes) <= 1
        counts = torch.stack([torch.bincount(LABELS[p], minlength=5) for p in parts])
        assert torch.all(counts.max(0).values - counts.min(0).values <= 1)
    plain = partition(LABELS, 10, seed=0)
    counts = torch.stack([torch.bincount(LABELS[p], minlength=5) for p in plain])
    assert torch.any(counts.max(0).values - counts.min(0).values > 1)  # balance is not free


def test_partition_errors():
    with pytest.raises(DataError, match="T=98"):
        partition(LABELS, 98, 0)
    for bad in (0, -2, 2.5):
        with pytest.raises(ConfigError, match="T"):
            partition(LABELS, bad, 0)


def test_split_megabatch_inside_disjoint_stratified():
    mb = partition(LABELS, 2, seed=0)[0]
    train, val = split_megabatch(mb, LABELS, 0.2, seed=0)
    assert set(train.tolist()) | set(val.tolist()) == set(mb.tolist())
    assert set(train.tolist()).isdisjoint(val.tolist())
    counts = torch.bincount(LABELS[mb], minlength=5).tolist()
    expected = [int(n * 0.2 + 0.5) for n in counts]
    assert torch.bincount(LABELS[val], minlength=5).tolist() == expected
    all_train, no_val = split_megabatch(mb, LABELS, 0.0, seed=0)
    assert torch.equal(all_train, mb) and no_val.numel() == 0
    with pytest.raises(ConfigError, match="val_fraction"):
        split_megabatch(mb, LABELS, 1.0, seed=0)


def test_replay_parse():
    assert Replay.parse("full") == Replay("full") and Replay.parse(" None ") == Replay("none")
    assert Replay.parse("window:3") == Replay("window", 3)
    assert str(Replay.parse("buffer:500")) == "buffer:500"
    for bad in ("fulll", "window", "window:0", "buffer:", "buffer:-3", "full:2", "", "reservoir:4"):
        with pytest.raises(ConfigError, match="invalid replay"):
            Replay.parse(bad)
    with pytest.raises(ConfigError, match="did you mean 'full'"):
        Replay.parse("ful")
    with pytest.raises(ConfigError, match="size >= 1"):
        Replay("window")
    with pytest.raises(ConfigError, match="takes no size"):
        Replay("full", 3)


MBS = [torch.arange(0, 4), torch.arange(4, 8), torch.arange(8, 12), torch.arange(12, 16)]


def test_replay_full_none_window_at_each_stage():
    for b in range(4):
        assert sorted(replay_indices(MBS, b, "full").tolist()) == list(range(4 * b + 4))
        assert replay_indices(MBS, b, "none").tolist() == MBS[b].tolist()
        low = max(0, b - 1)
        assert sorted(replay_indices(MBS, b, "window:2").tolist()) == list(
            range(4 * low, 4 * b + 4)
        )
    assert sorted(replay_indices(MBS, 3, Replay("window", 10)).tolist()) == list(range(16))
    with pytest.raises(ConfigError, match="stage 4"):
        replay_indices(MBS, 4, "full")


def test_replay_buffer_at_each_stage_and_idempotent():
    buffer = ReservoirBuffer(6, seed=0)
    assert replay_indices(MBS, 0, "buffer:6", buffer).tolist() == MBS[0].tolist()
    for b in range(1, 4):
        got = replay_indices(MBS, b, "buffer:6", buffer)
        assert got[:4].tolist() == MBS[b].tolist()
        past = got[4:]
        assert past.numel() == min(6, 4 * b) and set(past.tolist()) <= set(range(4 * b))
        assert buffer.seen == 4 * b
        assert torch.equal(replay_indices(MBS, b, "buffer:6", buffer), got)  # no double counting
    manual = ReservoirBuffer(6, seed=0)
    for b in range(3):
        manual.add(MBS[b])
    assert torch.equal(replay_indices(MBS, 3, "buffer:6", manual), got)
    with pytest.raises(ConfigError, match="needs a ReservoirBuffer"):
        replay_indices(MBS, 1, "buffer:6")
    with pytest.raises(ConfigError, match="capacity 6"):
        replay_indices(MBS, 1, "buffer:5", ReservoirBuffer(6))
    odd = ReservoirBuffer(6)
    odd.add(torch.arange(3))
    with pytest.raises(DataError, match="seen 3"):
        replay_indices(MBS, 2, "buffer:6", odd)


def test_reservoir_size_contents_and_state_roundtrip():
    buf = ReservoirBuffer(10, seed=1)
    buf.add(torch.arange(7))
    assert len(buf) == 7 and buf.indices().tolist() == list(range(7))
    buf.add(torch.arange(7, 30))
    assert len(buf) == 10 and buf.seen == 30 and set(buf.indices().tolist()) <= set(range(30))
    state = buf.state_dict()
    resumed = ReservoirBuffer(10, seed=1)
    resumed.load_state_dict(state)
    buf.add(torch.arange(30, 80))
    resumed.add(torch.arange(30, 80))
    assert torch.equal(buf.indices(), resumed.indices()) and resumed.seen == 80
    with pytest.raises(ConfigError, match="capacity"):
        ReservoirBuffer(0)
    with pytest.raises(ConfigError, match="capacity"):
        ReservoirBuffer(5).load_state_dict(state)


def chi_square(counts: torch.Tensor, expected: float) -> float:
    return float(((counts.double() - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("chunks", [1, 5])
def test_reservoir_is_uniform_over_everything_seen(chunks):
    items, capacity, trials = 12, 4, 3000
    counts = torch.zeros(items)
    for seed in range(trials):
        buf = ReservoirBuffer(capacity, seed=seed)
        for part in torch.arange(items).chunk(chunks):
            buf.add(part)
        counts[buf.indices()] += 1
    expected = trials * capacity / items
    # 11 degrees of freedom; the statistic averages about 11 * (1 - 4/12) ≈ 7. An off-by-one in
    # the replacement draw (j ~ U{0..t-1}) scores about 200 here.
    assert chi_square(counts, expected) < 11 + 4 * (2 * 11) ** 0.5
    late_bias = torch.zeros(items)
    late_bias[-capacity:] = trials  # e.g. "keep the newest" would fail badly
    assert chi_square(late_bias, expected) > 1000
