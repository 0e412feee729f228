"""Density schedules: cubic vs torch.ao.pruning's CubicSL, APP's progressive, IMP levels."""

from __future__ import annotations

import numpy as np
import pytest

from underbudget import sparsity
from underbudget.errors import ConfigError


@pytest.mark.parametrize(
    "s_i,s_f,t0,dt,n", [(0.0, 0.9, 0, 10, 10), (0.2, 0.75, 30, 7, 5), (0.5, 0.98, 3, 1, 40)]
)
def test_cubic_equals_torch_ao_cubicsl(s_i, s_f, t0, dt, n):
    from torch.ao.pruning import CubicSL

    for t in range(0, t0 + n * dt + 15):
        ref = CubicSL.sparsity_compute_fn(s_0=s_i, s_f=s_f, t=t, t_0=t0, dt=dt, n=n)
        got = sparsity.cubic_density(t, 1 - s_f, 1 - s_i, t0=t0, n=n, dt=dt)
        assert 1 - got == pytest.approx(ref, abs=1e-12), t


def test_cubic_hand_table():
    # s_f = 0.8 from s_i = 0, n dt = 4: s_t = 0.8 (1 - (1 - t/4)^3)
    expected = [0.0, 0.8 * (1 - 0.75**3), 0.8 * (1 - 0.5**3), 0.8 * (1 - 0.25**3), 0.8, 0.8]
    got = [1 - sparsity.cubic_density(t, 0.2, 1.0, 0, 4, 1) for t in range(6)]
    assert got == pytest.approx(expected)


def test_gradual_events():
    events = sparsity.gradual_densities(0.1, 1.0, t0=5, n=3, dt=10)
    assert [t for t, _ in events] == [5, 15, 25, 35]
    assert events[0][1] == 1.0 and events[-1][1] == pytest.approx(0.1)


def test_progressive_app_default_and_one_stage():
    got = sparsity.progressive_densities(8, tau=4.5)
    assert got == pytest.approx(list(0.8 ** np.linspace(1, 4.5, 8)))
    assert got[-1] == pytest.approx(0.366, abs=1e-3)
    assert sparsity.progressive_densities(1, tau=4.5) == pytest.approx([0.8**4.5])


def test_progressive_shapes():
    geo = sparsity.progressive_densities(5, d_start=0.8, d_final=0.05)
    ratios = np.array(geo[1:]) / np.array(geo[:-1])
    assert ratios == pytest.approx([ratios[0]] * 4)
    lin = sparsity.progressive_densities(5, d_start=0.8, d_final=0.2, shape="linear")
    assert lin == pytest.approx([0.8, 0.65, 0.5, 0.35, 0.2])
    cub = sparsity.progressive_densities(3, d_start=0.8, d_final=0.2, shape="cubic")
    assert cub == pytest.approx([0.8, 0.2 + 0.6 * 0.125, 0.2])
    # tau and the generic form agree
    assert sparsity.progressive_densities(6, tau=3.0) == pytest.approx(
        sparsity.progressive_densities(6, d_start=0.8, d_final=0.8**3)
    )


def test_imp_levels():
    assert sparsity.imp_densities(3) == pytest.approx([0.8, 0.64, 0.512])
    assert sparsity.imp_densities(2, rate=0.5) == pytest.approx([0.5, 0.25])


def test_schedule_errors():
    with pytest.raises(ConfigError, match="did you mean 'progressive'"):
        sparsity.schedule_densities("progresive", T=3, tau=2)
    with pytest.raises(ConfigError, match="shape"):
        sparsity.progressive_densities(3, tau=2, shape="exp")
    with pytest.raises(ConfigError, match="T >= 1"):
        sparsity.progressive_densities(0, tau=2)
    with pytest.raises(ConfigError, match="either tau or d_final"):
        sparsity.progressive_densities(3, tau=2, d_final=0.5)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        sparsity.cubic_density(3, 0.0)
    assert sparsity.schedule_densities("one_shot", density=0.3) == [0.3]
    assert sparsity.schedule_densities("imp", levels=2) == pytest.approx([0.8, 0.64])
