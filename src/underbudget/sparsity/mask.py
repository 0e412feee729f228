"""MaskSet: one bool mask per prunable parameter, keyed by parameter name.

Masks are plain tensors, not hooks: applying them zeroes weights in place, so ``state_dict``
keys never change and ``deepcopy``, ``torch.compile`` and DDP keep working. True means "kept".
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from underbudget.errors import CheckpointError, ConfigError
from underbudget.sparsity.mask_binding import MaskBinding
from underbudget.sparsity.targets import TargetsLike, resolve_targets, unwrap
from underbudget.utils.atomic import write_bytes
from underbudget.utils.tensorfile import safetensors_bytes

FORMAT = "underbudget.masks"
FORMAT_VERSION = "1"


class MaskSet:
    """Bool masks over named parameters; True keeps a weight, False prunes it.

    A MaskSet remembers (weakly) the last model it was applied to or built from, so that
    :meth:`apply` and :meth:`mask_grads` can be called without the model. Every change of a
    mask bumps :attr:`version`, which lets enforcers reset optimizer state exactly once.
    """

    def __init__(self, masks: Mapping[str, Tensor]):
        self._masks: dict[str, Tensor] = {}
        for name, mask in masks.items():
            self._masks[name] = _as_bool(mask, name)
        self.version = 0
        self._model_ref: weakref.ref | None = None
        self._binding: MaskBinding | None = None
        self._binding_key: tuple | None = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, targets: TargetsLike = None) -> MaskSet:
        """All-True masks over the prunable parameters of ``model``."""
        params = resolve_targets(model, targets)
        masks = cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()})
        masks._remember(model)
        return masks

    @classmethod
    def from_weights(cls, model: nn.Module, targets: TargetsLike = None) -> MaskSet:
        """Masks that keep the nonzero weights of ``model`` (for models pruned elsewhere)."""
        params = resolve_targets(model, targets)
        masks = cls({n: p.detach() != 0 for n, p in params.items()})
        masks._remember(model)
        return masks

    def copy(self) -> MaskSet:
        """An independent copy (same names, cloned tensors, same remembered model)."""
        out = MaskSet({n: m.clone() for n, m in self._masks.items()})
        out._model_ref = self._model_ref
        return out

    # -- mapping interface ----------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __setitem__(self, name: str, mask: Tensor) -> None:
        if name not in self._masks:
            raise KeyError(f"{name!r} is not in this MaskSet; names: {', '.join(self._masks)}")
        mask = _as_bool(mask, name)
        if mask.shape != self._masks[name].shape:
            raise ConfigError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, expected "
                f"{tuple(self._masks[name].shape)}"
            )
        self._masks[name] = mask.to(self._masks[name].device)
        self._changed()

    def update(self, masks: Mapping[str, Tensor]) -> None:
        """Replace several masks at once (one version bump)."""
        for name, mask in masks.items():
            if name not in self._masks or mask.shape != self._masks[name].shape:
                raise ConfigError(f"cannot update {name!r}: unknown name or shape mismatch")
        for name, mask in masks.items():
            self._masks[name] = _as_bool(mask, name).to(self._masks[name].device)
        self._changed()

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def names(self) -> list[str]:
        return list(self._masks)

    def items(self):
        return self._masks.items()

    def values(self):
        return self._masks.values()

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} masks, density={self.density():.4f})"

    # -- measures -------------------------------------------------------------------------
    def numel(self) -> int:
        """Number of prunable weights."""
        return sum(m.numel() for m in self._masks.values())

    def nonzeros(self) -> int:
        """Number of kept weights."""
        return sum(int(m.count_nonzero()) for m in self._masks.values())

    def layer_nonzeros(self) -> dict[str, int]:
        return {n: int(m.count_nonzero()) for n, m in self._masks.items()}

    def density(self) -> float:
        """Fraction of prunable weights kept."""
        total = self.numel()
        return self.nonzeros() / total if total else 1.0

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layer_densities(self) -> dict[str, float]:
        return {n: int(m.count_nonzero()) / max(m.numel(), 1) for n, m in self._masks.items()}

    def density_all(self, model: nn.Module | None = None) -> float:
        """Fraction of *all* parameters of the model not removed by the masks."""
        model = self._model(model)
        total = sum(p.numel() for p in unwrap(model).parameters())
        pruned = self.numel() - self.nonzeros()
        return (total - pruned) / total if total else 1.0

    def iou(self, other: MaskSet) -> float:
        """Intersection over union of the kept weights of two mask sets (same names)."""
        self._check_same_names(other)
        inter = union = 0
        for name, mask in self._masks.items():
            o = other[name].to(mask.device)
            inter += int((mask & o).count_nonzero())
            union += int((mask | o).count_nonzero())
        return inter / union if union else 1.0

    def layer_iou(self, other: MaskSet) -> dict[str, float]:
        self._check_same_names(other)
        out = {}
        for name, mask in self._masks.items():
            o = other[name].to(mask.device)
            union = int((mask | o).count_nonzero())
            out[name] = int((mask & o).count_nonzero()) / union if union else 1.0
        return out

    def is_subset_of(self, other: MaskSet) -> bool:
        """True when every weight kept here is also kept by ``other``."""
        self._check_same_names(other)
        return all(not bool((m & ~other[n].to(m.device)).any()) for n, m in self._masks.items())

    def union(self, other: MaskSet) -> MaskSet:
        self._check_same_names(other)
        return MaskSet({n: m | other[n].to(m.device) for n, m in self._masks.items()})

    def intersection(self, other: MaskSet) -> MaskSet:
        self._check_same_names(other)
        return MaskSet({n: m & other[n].to(m.device) for n, m in self._masks.items()})

    def _check_same_names(self, other: MaskSet) -> None:
        if list(other) != list(self) and set(other) != set(self):
            raise ConfigError("the two MaskSets cover different parameters")

    # -- enforcement ----------------------------------------------------------------------
    def apply(self, model: nn.Module | None = None) -> MaskSet:
        """Zero the pruned weights of ``model`` in place (and remember the model)."""
        self.binding(model).apply()
        return self

    def mask_grads(self, model: nn.Module | None = None) -> None:
        """Zero the gradients of pruned weights in place."""
        self.binding(model).mask_grads()

    def binding(self, model: nn.Module | None = None) -> MaskBinding:
        """Parameters paired with device copies of the masks (cached until something changes).

        After a mask change on the same model the cached copies are refreshed in place, so no
        second set of device masks is ever allocated.
        """
        model = self._model(model)
        cached = self._binding
        if cached is not None and self._binding_key == (id(model), self.version) and cached.valid():
            return cached
        if (
            cached is not None
            and self._binding_key[0] == id(model)
            and cached.valid()
            and cached.refresh(self._masks, unwrap(model))
        ):
            self._binding_key = (id(model), self.version)
            return cached
        self._binding = None  # free the old device copies before making new ones
        self.validate(model)
        self._binding = MaskBinding(self._masks, unwrap(model))
        self._binding_key = (id(model), self.version)
        return self._binding

    def bind(self, model: nn.Module) -> MaskSet:
        """Remember ``model`` for calls that omit it; check names and shapes."""
        self.validate(model)
        self._remember(model)
        return self

    def validate(self, model: nn.Module) -> None:
        """Raise CheckpointError unless every mask names a parameter of the same shape."""
        named = dict(unwrap(model).named_parameters())
        missing = [n for n in self._masks if n not in named]
        wrong = [
            (n, tuple(m.shape), tuple(named[n].shape))
            for n, m in self._masks.items()
            if n in named and m.shape != named[n].shape
        ]
        if missing or wrong:
            parts = []
            if missing:
                parts.append(
                    f"{len(missing)} mask(s) name parameters the model lacks (e.g. {missing[0]!r})"
                )
            if wrong:
                n, ms, ps = wrong[0]
                parts.append(
                    f"{len(wrong)} shape mismatch(es) (e.g. {n!r}: mask {ms} vs parameter {ps})"
                )
            raise CheckpointError(
                f"masks do not fit {type(unwrap(model)).__name__}: {'; '.join(parts)}. They "
                "were made for another architecture: load them into the model they came from "
                "or prune this model anew"
            )

    def to(self, device: torch.device | str) -> MaskSet:
        """Move the masks to ``device`` in place (returns self, like ``Module.to``)."""
        for name in self._masks:
            self._masks[name] = self._masks[name].to(device)
        self._binding = None
        return self

    @property
    def device(self) -> torch.device:
        return next(iter(self._masks.values())).device

    def _model(self, model: nn.Module | None) -> nn.Module:
        if model is not None:
            self._remember(model)
            return model
        found = self._model_ref() if self._model_ref is not None else None
        if found is None:
            raise ConfigError(
                "this MaskSet is not attached to a model: pass the model "
                "(e.g. masks.apply(model)) once"
            )
        return found

    def _remember(self, model: nn.Module) -> None:
        self._model_ref = weakref.ref(model)

    def _changed(self) -> None:
        self.version += 1

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """Masks by parameter name (CPU bool tensors)."""
        return {n: m.detach().cpu().clone() for n, m in self._masks.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Replace the masks with ``state`` (names and shapes must match)."""
        if set(state) != set(self._masks):
            extra = sorted(set(state) - set(self._masks))
            lacking = sorted(set(self._masks) - set(state))
            raise CheckpointError(
                "mask state does not match this MaskSet "
                f"(unexpected: {extra[:3]}, missing: {lacking[:3]}); it was saved for another "
                "model or another choice of prunable targets"
            )
        for name, mask in state.items():
            if tuple(mask.shape) != tuple(self._masks[name].shape):
                raise CheckpointError(
                    f"mask state for {name!r} has shape {tuple(mask.shape)}, expected "
                    f"{tuple(self._masks[name].shape)}: it was saved for another architecture"
                )
        for name, mask in state.items():
            self._masks[name] = _as_bool(mask, name).to(self._masks[name].device).clone()
        self._changed()

    def save(self, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
        """Write the masks as safetensors (atomically, byte-reproducibly), shapes as metadata."""
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta["format"] = FORMAT
        meta["format_version"] = FORMAT_VERSION
        meta["shapes"] = json.dumps({n: list(m.shape) for n, m in self._masks.items()})
        meta["density"] = f"{self.density():.8f}"
        tensors = {n: m.detach().cpu().contiguous() for n, m in self._masks.items()}
        write_bytes(path, safetensors_bytes(tensors, metadata=meta))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: nn.Module | None = None,
        device: torch.device | str | None = None,
    ) -> MaskSet:
        """Read masks saved by :meth:`save`; with ``model``, check they fit and move them there."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not os.path.isfile(path):
            raise CheckpointError(f"mask file {os.fspath(path)!r} does not exist")
        try:
            tensors = load_file(os.fspath(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"cannot read mask file {os.fspath(path)!r} ({exc}); it is not a safetensors "
                "file or it is truncated: save the masks again"
            ) from exc
        # keep the saved order when the metadata has it
        order = _saved_order(path) or list(tensors)
        masks = cls({n: tensors[n] for n in order if n in tensors})
        if model is not None:
            masks.validate(model)
            if device is None:
                device = next(iter(unwrap(model).parameters())).device
            masks._remember(model)
        if device is not None:
            masks.to(device)
        return masks

    def __getstate__(self) -> dict:
        return {"masks": self._masks, "version": self.version}

    def __setstate__(self, state: dict) -> None:
        self._masks = state["masks"]
        self.version = state["version"]
        self._model_ref = None
        self._binding = None
        self._binding_key = None


def _saved_order(path: str | os.PathLike) -> list[str] | None:
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return list(json.loads(meta["shapes"]))
    except (KeyError, ValueError, OSError):
        return None


def _as_bool(mask: Tensor, name: str) -> Tensor:
    if not isinstance(mask, Tensor):
        raise ConfigError(f"mask for {name!r} must be a tensor, not {type(mask).__name__}")
    mask = mask.detach()
    if mask.dtype != torch.bool:
        mask = mask != 0
    return mask
