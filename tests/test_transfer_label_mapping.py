"""Label mapping: RLM/FLM/ILM, greedy vs Hungarian, count matrices, diagnostics, errors."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from underbudget.data import ImageSet, Loader
from underbudget.data.augment import Augment
from underbudget.errors import ConfigError, DataError
from underbudget.transfer import (
    ExpansivePrompt,
    LabelMapper,
    LabelMappingCallback,
    VisualPrompt,
    count_matrix,
    greedy_mapping,
    hungarian_mapping,
    random_mapping,
)
from underbudget.transfer.label_mapping import _min_cost_assignment


def _total(D: torch.Tensor, mapping: torch.Tensor) -> int:
    return int(D[mapping, torch.arange(D.shape[1])].sum())


def _brute_force_best(D: torch.Tensor) -> int:
    return _brute_force_smallest_optimum(D)[0]


def _brute_force_smallest_optimum(D: torch.Tensor) -> tuple[int, list[int]]:
    """The best total and, among the maps reaching it, the lexicographically smallest."""
    num_source, num_target = D.shape
    best, smallest = None, None
    for perm in itertools.permutations(range(num_source), num_target):  # lexicographic order
        total = _total(D, torch.tensor(perm))
        if best is None or total > best:
            best, smallest = total, list(perm)
    return best, smallest


def _scipy_best(D: torch.Tensor) -> int:
    rows, cols = linear_sum_assignment(D.numpy().T, maximize=True)
    return int(D.numpy().T[rows, cols].sum())


def test_random_mapping_is_injective_and_seeded():
    a = random_mapping(10, 100, seed=3)
    torch.manual_seed(123)  # the global RNG must not matter
    b = random_mapping(10, 100, seed=3)
    c = random_mapping(10, 100, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.unique().numel() == 10 and a.min() >= 0 and a.max() < 100
    assert a.dtype == torch.long


def test_count_matrix_matches_loops():
    gen = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 7, (200,), generator=gen)
    labels = torch.randint(0, 4, (200,), generator=gen)
    D = count_matrix(preds, labels, 7, 4)
    ref = torch.zeros(7, 4, dtype=torch.long)
    for s, t in zip(preds.tolist(), labels.tolist()):
        ref[s, t] += 1
    assert torch.equal(D, ref)
    with pytest.raises(DataError, match="num_target"):
        count_matrix(preds, labels + 1, 7, 4)


def test_greedy_differs_from_hungarian_on_a_hand_made_matrix():
    # rows: source classes, columns: target classes
    D = torch.tensor([[10, 9, 0], [9, 0, 0], [0, 0, 1]])
    # greedy: 10 -> (s0, t0); among what is left, 1 -> (s2, t2); then (s1, t1): total 11
    assert greedy_mapping(D).tolist() == [0, 1, 2]
    assert _total(D, greedy_mapping(D)) == 11
    # the unique optimum: t0 <- s1 (9), t1 <- s0 (9), t2 <- s2 (1): total 19
    assert hungarian_mapping(D).tolist() == [1, 0, 2]
    assert _brute_force_best(D) == 19 == _scipy_best(D)


def test_greedy_tie_breaking_is_first_maximum_in_row_major_order():
    D = torch.ones(4, 3, dtype=torch.long)
    assert greedy_mapping(D).tolist() == [0, 1, 2]
    D = torch.tensor([[1, 5], [5, 1], [5, 5]])
    # first 5 in row-major order is (s0, t1); then t0's best remaining is s1 (5) before s2 (5)
    assert greedy_mapping(D).tolist() == [1, 0]


@pytest.mark.parametrize("num_source,num_target", [(5, 5), (6, 4), (7, 1), (5, 3)])
def test_hungarian_agrees_with_brute_force_and_scipy(num_source, num_target):
    gen = torch.Generator().manual_seed(num_source * 10 + num_target)
    for _ in range(5):
        D = torch.randint(0, 20, (num_source, num_target), generator=gen)
        best = _brute_force_best(D)
        m = hungarian_mapping(D)
        assert m.unique().numel() == num_target
        assert _total(D, m) == best == _scipy_best(D)
        assert _total(D, greedy_mapping(D)) <= best


def test_hungarian_matches_scipy_on_larger_rectangular_costs():
    gen = torch.Generator().manual_seed(1)
    D = torch.randint(0, 50, (60, 25), generator=gen)
    assert _total(D, hungarian_mapping(D)) == _scipy_best(D)
    cost = torch.rand(4, 9, generator=gen).double().numpy()
    cols, u, v = _min_cost_assignment(cost)
    best = min(sum(cost[i, p[i]] for i in range(4)) for p in itertools.permutations(range(9), 4))
    assert sum(cost[i, cols[i]] for i in range(4)) == pytest.approx(best)
    # the potentials are an optimal dual: feasible, tight on the assignment, 0 on free columns
    assert (u[:, None] + v[None, :] <= cost + 1e-12).all()
    assert np.allclose(u + v[cols], cost[np.arange(4), cols])
    free = np.setdiff1d(np.arange(9), cols)
    assert np.allclose(v[free], 0.0) and u.sum() + v.sum() == pytest.approx(best)


def test_hungarian_on_tied_matrices_is_optimal_and_lexicographically_smallest():
    # hand-worked: sources are rows. Optimal total 2 is reached by [2, 0], [2, 1] and [1, 2];
    # the smallest map takes s1 for t0, which needs t1 to move on to s2
    D = torch.tensor([[0, 0], [1, 0], [2, 1]])
    assert hungarian_mapping(D).tolist() == [1, 2]
    assert hungarian_mapping(torch.zeros(5, 3, dtype=torch.long)).tolist() == [0, 1, 2]
    # a matrix on which scipy and a plain Kuhn-Munkres pick different optima (4 of them)
    D = torch.tensor([[1, 0, 2], [2, 0, 2], [2, 0, 1], [1, 0, 2]])
    assert hungarian_mapping(D).tolist() == [1, 0, 3]
    gen = torch.Generator().manual_seed(7)
    for trial in range(300):
        num_source = int(torch.randint(1, 7, (1,), generator=gen))
        num_target = int(torch.randint(1, num_source + 1, (1,), generator=gen))
        high = 1 + trial % 3  # counts in {0}, {0, 1} or {0, 1, 2}: ties everywhere
        D = torch.randint(0, high, (num_source, num_target), generator=gen)
        best, smallest = _brute_force_smallest_optimum(D)
        m = hungarian_mapping(D)
        assert _total(D, m) == best == _scipy_best(D)
        assert m.tolist() == smallest
    big = torch.randint(0, 3, (200, 40), generator=gen)  # many optima, one answer
    assert _total(big, hungarian_mapping(big)) == _scipy_best(big)
    assert torch.equal(hungarian_mapping(big), hungarian_mapping(big.clone()))


def test_too_many_target_classes_is_one_clear_error():
    for make in (
        lambda: LabelMapper(10, 11),
        lambda: random_mapping(11, 10, 0),
        lambda: greedy_mapping(torch.zeros(3, 4)),
    ):
        with pytest.raises(ConfigError, match="source model outputs only"):
            make()
    with pytest.raises(ConfigError, match="did you mean 'ilm'"):
        LabelMapper(10, 2, mode="ilmm")


def test_map_logits_selects_columns_and_routes_gradients():
    mapper = LabelMapper(5, 3, mode="rlm", seed=1)
    logits = torch.randn(4, 5, requires_grad=True)
    out = mapper.map_logits(logits)
    assert torch.equal(out, logits[:, mapper.mapping])
    out.sum().backward()
    hit = torch.zeros(5)
    hit[mapper.mapping] = 1
    assert torch.equal(logits.grad, hit.expand(4, 5))
    with pytest.raises(ConfigError, match="num_source=5"):
        mapper.map_logits(torch.randn(2, 6))


class _BorderProbe(nn.Module):
    """Source model whose prediction depends on the prompt border and the image centre.

    logits = [c*b, (1-c)*b, c*(1-b), (1-c)*(1-b)], c = centre pixel, b = top-left pixel.
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        c = z[:, 0, self.size // 2, self.size // 2]
        b = z[:, 0, 0, 0]
        return torch.stack([c * b, (1 - c) * b, c * (1 - b), (1 - c) * (1 - b)], dim=1)


def _prompted(mode: str) -> VisualPrompt:
    mapper = LabelMapper(4, 2, mode=mode, seed=0)
    return VisualPrompt(_BorderProbe(8), ExpansivePrompt(8, 4, 1), mapper, mean=[0.0], std=[1.0])


def _target_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    x0 = torch.full((3, 1, 4, 4), 0.9)  # target class 0: bright
    x1 = torch.full((5, 1, 4, 4), 0.1)  # target class 1: dark
    return [(x0, torch.zeros(3, dtype=torch.long)), (x1, torch.ones(5, dtype=torch.long))]


def _set_border(vp: VisualPrompt, value: float) -> None:
    with torch.no_grad():
        vp.prompt.theta.fill_(value)


def test_ilm_recomputes_when_the_prompt_changes():
    vp = _prompted("ilm")
    data = _target_data()
    _set_border(vp, 8.0)  # sigmoid ~ 1: sources 0/1 win
    vp.mapper.update(vp, data)
    assert vp.mapper.mapping.tolist() == [0, 1]
    expected = torch.zeros(4, 2, dtype=torch.long)
    expected[0, 0], expected[1, 1] = 3, 5
    assert torch.equal(vp.mapper.counts, expected)
    _set_border(vp, -8.0)  # sigmoid ~ 0: sources 2/3 win
    changed = vp.mapper.update(vp, data)
    assert vp.mapper.mapping.tolist() == [2, 3] and changed == 2
    assert len(vp.mapper.changes) == 2 and vp.mapper.changes[-1] == 2
    assert vp.mapper.history[-2:] == [[0, 1], [2, 3]]
    assert vp.training  # mode restored after counting


def test_flm_updates_once_and_rlm_never():
    data = _target_data()
    flm = _prompted("flm")
    _set_border(flm, 8.0)
    flm.mapper.update(flm, data)
    _set_border(flm, -8.0)
    assert flm.mapper.update(flm, data) == 0
    assert flm.mapper.mapping.tolist() == [0, 1]
    assert flm.mapper.update(flm, data, force=True) == 2
    rlm = _prompted("rlm")
    before = rlm.mapper.mapping.clone()
    assert rlm.mapper.update(rlm, data) == 0
    assert torch.equal(rlm.mapper.mapping, before) and rlm.mapper.counts is None


def test_callback_updates_each_epoch_logs_and_resumes():
    vp = _prompted("ilm")
    logged = []
    trainer = SimpleNamespace(
        model=vp,
        loader=_target_data(),
        epoch=0,
        stage=0,
        step=0,
        log=lambda event, **values: logged.append((event, values)),
    )
    cb = LabelMappingCallback(vp.mapper)
    _set_border(vp, 8.0)
    cb.before_epoch(trainer)
    trainer.epoch = 1
    _set_border(vp, -8.0)
    cb.before_epoch(trainer)
    assert [v["mapping"] for _, v in logged] == [[0, 1], [2, 3]]
    assert logged[-1][0] == "label_mapping" and logged[-1][1]["changed"] == 2
    state = cb.state_dict()
    other = _prompted("ilm")
    LabelMappingCallback(other.mapper).load_state_dict(state)
    assert other.mapper.mapping.tolist() == [2, 3]
    assert other.mapper.diagnostics() == vp.mapper.diagnostics()


class _LeftColumnProbe(nn.Module):
    """Source model reading the image window's left and right columns: logits [left, right]."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        left, right = z[:, 0, 2:6, 2].mean(1), z[:, 0, 2:6, 5].mean(1)
        return torch.stack([left, right, torch.zeros_like(left)], dim=1)


def test_counts_are_taken_on_unaugmented_images():
    # target class 0: bright left column; class 1: bright right column. A horizontal flip
    # swaps them, so flipped images are predicted as the other source class.
    images = torch.zeros(8, 1, 4, 4, dtype=torch.uint8)
    images[:5, :, :, 0] = 255
    images[5:, :, :, 3] = 255
    labels = torch.tensor([0] * 5 + [1] * 3)
    data = ImageSet(images, labels, ["left", "right"])
    loader = Loader(data, 8, shuffle=True, augment=Augment(flip=True), normalize=False, seed=3)
    mapper = LabelMapper(3, 2, mode="ilm", seed=0)
    vp = VisualPrompt(_LeftColumnProbe(), ExpansivePrompt(8, 4, 1), mapper, [0.0], [1.0])
    unaugmented = torch.tensor([[5, 0], [0, 3], [0, 0]])
    augmented = mapper.compute_counts(vp, loader)  # what the training batches would give
    assert not torch.equal(augmented, unaugmented)  # the flips do change the counts
    trainer = SimpleNamespace(
        model=vp, loader=loader, epoch=0, stage=0, step=0, log=lambda event, **values: None
    )
    LabelMappingCallback(mapper).before_epoch(trainer)
    assert torch.equal(mapper.counts, unaugmented)
    assert mapper.mapping.tolist() == [0, 1]
    assert loader.augment == Augment(flip=True)  # the training loader itself is untouched


def test_mapping_is_saved_in_the_state_dict():
    mapper = LabelMapper(10, 4, mode="flm", seed=5)
    mapper.set_mapping(torch.tensor([9, 8, 7, 6]))
    fresh = LabelMapper(10, 4, mode="flm", seed=0)
    fresh.load_state_dict(mapper.state_dict())
    assert fresh.mapping.tolist() == [9, 8, 7, 6]
    with pytest.raises(ConfigError, match="distinct"):
        mapper.set_mapping(torch.tensor([1, 1, 2, 3]))
