"""Which parameters may be pruned.

By default the ``weight`` of every convolution (1d/2d/3d, transposed included) and every
``Linear`` layer is prunable; biases and normalization parameters never are. Name patterns are
shell-style (``fnmatch``, e.g. ``"layer1.*"``) or, with a ``re:`` prefix, regular expressions
matched against the whole parameter name. "First" and "last" layer mean the first and last
prunable parameter in registration order (``model.named_parameters()``), which is the
execution order for the usual sequential and ResNet-style models.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from underbudget.errors import ConfigError, closest

#: module types whose ``weight`` is prunable by default
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class Targets:
    """A description of the prunable set, resolvable on any model."""

    exclude_first: bool = False
    exclude_last: bool = False
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def resolve(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The prunable parameters of ``model``, by name, in registration order."""
        return prunable_parameters(
            model, self.exclude_first, self.exclude_last, self.include, self.exclude
        )


TargetsLike = Targets | Mapping | Sequence[str] | str | None


def unwrap(model: nn.Module) -> nn.Module:
    """The module that owns the parameters (strips torch.compile and (D)DP wrappers)."""
    for _ in range(8):
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(
            model, nn.DataParallel | nn.parallel.DistributedDataParallel
        ):
            inner = model.module
        if inner is None:
            return model
        model = inner
    return model


def _as_patterns(patterns: str | Iterable[str] | None) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def matches(name: str, pattern: str) -> bool:
    """True when ``name`` matches a glob pattern or a ``re:``-prefixed regular expression."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def prunable_parameters(
    model: nn.Module,
    exclude_first: bool = False,
    exclude_last: bool = False,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> dict[str, nn.Parameter]:
    """Prunable parameters of ``model`` by name (as in ``named_parameters()``).

    ``include`` replaces the default set by every parameter whose name matches one of the
    patterns; ``exclude`` then removes matches; ``exclude_first``/``exclude_last`` finally drop
    the first/last remaining parameter.
    """
    model = unwrap(model)
    include = _as_patterns(include)
    exclude = _as_patterns(exclude)
    named = dict(model.named_parameters())
    if include:
        for pattern in include:
            if not any(matches(n, pattern) for n in named):
                raise ConfigError(
                    f"include pattern {pattern!r} matches no parameter of "
                    f"{type(model).__name__}{closest(pattern, named)}; parameter names look "
                    f"like {', '.join(list(named)[:4])}"
                )
        chosen = [n for n in named if any(matches(n, p) for p in include)]
    else:
        chosen = []
        for mod_name, module in model.named_modules():
            if isinstance(module, DEFAULT_LAYER_TYPES):
                weight = getattr(module, "weight", None)
                if isinstance(weight, nn.Parameter):
                    full = f"{mod_name}.weight" if mod_name else "weight"
                    if full in named and named[full] is weight and full not in chosen:
                        chosen.append(full)
        order = {n: i for i, n in enumerate(named)}
        chosen.sort(key=order.__getitem__)
    chosen = [n for n in chosen if not any(matches(n, p) for p in exclude)]
    if exclude_first and chosen:
        chosen = chosen[1:]
    if exclude_last and chosen:
        chosen = chosen[:-1]
    if not chosen:
        raise ConfigError(
            f"no prunable parameters in {type(model).__name__}: by default only Conv and Linear "
            "weights are prunable; pass include=['<name pattern>'] or relax exclude"
        )
    return {n: named[n] for n in chosen}


def as_targets(targets: TargetsLike) -> Targets:
    """Normalise the accepted forms of ``targets`` into a :class:`Targets`.

    Accepted: ``None`` (defaults), a :class:`Targets`, a mapping of its fields, or a pattern /
    list of patterns / explicit names (an ``include`` list).
    """
    if targets is None:
        return Targets()
    if isinstance(targets, Targets):
        return targets
    if isinstance(targets, Mapping):
        known = {"exclude_first", "exclude_last", "include", "exclude"}
        bad = [k for k in targets if k not in known]
        if bad:
            raise ConfigError(
                f"unknown targets option {bad[0]!r}{closest(bad[0], known)}; "
                f"choose from: {', '.join(sorted(known))}"
            )
        inc = targets.get("include")
        return Targets(
            exclude_first=bool(targets.get("exclude_first", False)),
            exclude_last=bool(targets.get("exclude_last", False)),
            include=None if inc is None else _as_patterns(inc),
            exclude=_as_patterns(targets.get("exclude")),
        )
    if isinstance(targets, str | Sequence):
        return Targets(include=_as_patterns(targets))
    raise ConfigError(
        f"targets must be None, a Targets, a dict of its options or a list of name patterns, "
        f"not {type(targets).__name__}"
    )


def resolve_targets(model: nn.Module, targets: TargetsLike = None) -> dict[str, nn.Parameter]:
    """Prunable parameters of ``model`` for any accepted form of ``targets``."""
    return as_targets(targets).resolve(model)
