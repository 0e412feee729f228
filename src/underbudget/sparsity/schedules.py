"""How density moves over time: one-shot, IMP levels, gradual (cubic) and progressive (APP).

All functions return *densities* (fraction kept); sparsity is ``1 - density``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from underbudget.errors import ConfigError, unknown
from underbudget.sparsity.allocation import check_density

SCHEDULES = ("one_shot", "imp", "gradual", "progressive")


def cubic(end: float, start: float, frac: float) -> float:
    """The cubic curve from ``start`` (frac 0) to ``end`` (frac 1): end + (start - end)(1 - frac)^3
    (Zhu & Gupta's schedule; the one implementation every cubic schedule calls)."""
    return end + (start - end) * (1.0 - frac) ** 3


#: how progressive densities move from d_start (frac 0) to d_final (frac 1):
#: ``fn(d_start, d_final, frac) -> density``; add one with :func:`register_shape`
Shape = Callable[[float, float, float], float]
SHAPES: dict[str, Shape] = {
    "geometric": lambda d_start, d_final, frac: d_start * (d_final / d_start) ** frac,
    "linear": lambda d_start, d_final, frac: d_start + (d_final - d_start) * frac,
    "cubic": lambda d_start, d_final, frac: cubic(d_final, d_start, frac),
}


def register_shape(name: str) -> Callable[[Shape], Shape]:
    """Decorator adding ``fn(d_start, d_final, frac) -> density`` as progressive schedule shape
    ``name`` (APP's ``method.shape``); it should fall from d_start to d_final."""

    def wrap(fn: Shape) -> Shape:
        SHAPES[name] = fn
        return fn

    return wrap


def cubic_density(
    step: int,
    d_final: float,
    d_initial: float = 1.0,
    t0: int = 0,
    n: int = 1,
    dt: int = 1,
) -> float:
    """Zhu & Gupta's gradual schedule as a density at ``step``.

    Sparsity s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 for t in [t0, t0 + n dt], s_i
    before t0 and s_f after (the same values as ``torch.ao.pruning.CubicSL``).
    """
    d_final = check_density(d_final, "final density")
    d_initial = check_density(d_initial, "initial density")
    if n < 1 or dt < 1:
        raise ConfigError(f"cubic schedule needs n >= 1 and dt >= 1, got n={n}, dt={dt}")
    s_i, s_f = 1.0 - d_initial, 1.0 - d_final
    if step <= t0:
        return d_initial
    if step >= t0 + n * dt:
        return d_final
    return 1.0 - cubic(s_f, s_i, (step - t0) / (n * dt))


def gradual_steps(total: int, start: float, end: float, interval: int) -> tuple[int, int, int]:
    """(t0, n, dt) of the cubic schedule: prune every ``interval`` steps from ``start`` to
    about ``end`` of ``total`` steps (one event at the end point when the window is shorter)."""
    t0 = int(round(start * total))
    t_end = max(t0 + 1, int(round(end * total)))
    span = t_end - t0
    if span < interval:
        return t0, 1, span
    return t0, span // interval, interval


def gradual_densities(
    d_final: float, d_initial: float = 1.0, t0: int = 0, n: int = 1, dt: int = 1
) -> list[tuple[int, float]]:
    """``(step, density)`` at each pruning event t0, t0 + dt, ..., t0 + n dt."""
    return [
        (t0 + i * dt, cubic_density(t0 + i * dt, d_final, d_initial, t0, n, dt))
        for i in range(n + 1)
    ]


def imp_densities(levels: int, rate: float = 0.2) -> list[float]:
    """Densities after each of ``levels`` IMP rounds that remove ``rate`` of what remains.

    Level k (1-based) keeps (1 - rate)^k, e.g. 0.8, 0.64, 0.512, ... for rate 0.2.
    """
    if levels < 1:
        raise ConfigError(f"IMP needs at least one level, got {levels}")
    if not 0.0 < rate < 1.0:
        raise ConfigError(f"IMP pruning rate must be in (0, 1), got {rate}")
    return [(1.0 - rate) ** k for k in range(1, levels + 1)]


def tau_to_density(tau: float) -> float:
    """APP's parametrisation: density 0.8^tau (tau = 4.5 keeps about a third)."""
    return 0.8**tau


def progressive_densities(
    T: int,
    tau: float | None = None,
    d_start: float | None = None,
    d_final: float | None = None,
    shape: str = "geometric",
) -> list[float]:
    """Per-stage densities of Anytime Progressive Pruning over ``T`` stages.

    With ``tau`` (APP's form): d_b = 0.8^{tau_b}, tau_b = linspace(1, tau, T); T = 1 gives
    [0.8^tau]. In general the densities go from ``d_start`` (default 0.8) to ``d_final``
    (default 0.8^tau) geometrically (equal ratios, identical to the tau form), linearly, or on
    a cubic curve d_final + (d_start - d_final)(1 - b/(T-1))^3. T = 1 is one-shot to the
    target, never "no pruning".
    """
    if int(T) != T or T < 1:
        raise ConfigError(f"progressive pruning needs T >= 1 stages, got {T!r}")
    T = int(T)
    if shape not in SHAPES:
        raise unknown("progressive schedule shape", shape, SHAPES)
    if tau is not None:
        if d_final is not None and not math.isclose(d_final, tau_to_density(tau), rel_tol=1e-9):
            raise ConfigError(
                f"give either tau or d_final, not both: tau={tau} means d_final="
                f"{tau_to_density(tau):.6g}, but d_final={d_final}"
            )
        if tau < 1.0:
            raise ConfigError(f"APP's tau must be >= 1 (density 0.8^tau <= 0.8), got {tau}")
        d_final = tau_to_density(tau)
    if d_final is None:
        raise ConfigError("progressive pruning needs a target: pass tau=... or d_final=...")
    d_final = check_density(d_final, "final density")
    d_start = check_density(0.8 if d_start is None else d_start, "start density")
    if d_start < d_final:
        raise ConfigError(
            f"progressive pruning goes down: d_start={d_start} is below d_final={d_final}"
        )
    if T == 1:
        return [d_final]
    if shape == "geometric" and tau is not None and d_start == 0.8:
        return [0.8 ** (1.0 + (tau - 1.0) * b / (T - 1)) for b in range(T)]
    fn = SHAPES[shape]
    out = [fn(d_start, d_final, b / (T - 1)) for b in range(T)]
    out[-1] = d_final
    return out


def schedule_densities(name: str, **kwargs) -> list[float]:
    """Densities of a named schedule, stage by stage (or event by event for ``gradual``).

    ``one_shot``: density; ``imp``: levels, rate; ``gradual``: d_final, d_initial, t0, n, dt;
    ``progressive``: T, tau, d_start, d_final, shape.
    """
    if name == "one_shot":
        return [check_density(kwargs.get("density", kwargs.get("d_final")))]
    if name == "imp":
        return imp_densities(**kwargs)
    if name == "gradual":
        return [d for _, d in gradual_densities(**kwargs)]
    if name == "progressive":
        return progressive_densities(**kwargs)
    raise unknown("schedule", name, SCHEDULES)
