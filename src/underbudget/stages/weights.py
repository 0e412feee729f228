"""The deployed model of a finished stage, whatever produced it.

:func:`deployed` finds it with the exporter's rules (:func:`underbudget.runs.deployed.locate`):

- a ``train``, ``anytime`` or ``d2sparse`` run (D2-Sparse deploys its slow network S), a
  ``lottery`` level (``level-KK``), a sweep member: ``artifacts/model.safetensors`` and, when
  pruned, ``artifacts/masks.safetensors``;
- a ``compress_transfer`` variant (``variants/<name>``): the weights of the child its summary
  names, with the bit width of a quantized variant (and a QAT variant's learned steps);
- a ``quantize`` stage (:mod:`.quantize`): its own weights and masks, its bit widths and the
  layers whose inputs it quantizes, described by the config of the run it quantized.

:func:`deployed_bytes` is what the model takes on disk in the exporter's compact layout:
every tensor dense, bitmask or CSR, whichever is smallest, and quantized weights as integer
codes with one scale per output channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from ..export.grid import recover_grid
from ..export.layout import encode, encode_quantized, export_bytes
from ..models import read_state_dict
from ..quant import input_quantized_layers, insert_activation_quantizers
from ..runs.deployed import locate
from ..sparsity import MaskSet
from ..utils.tensorfile import safetensors_bytes

QUANTIZE_STAGE = "quantize"


@dataclass
class Deployed:
    """A finished stage's deployed model: weights, masks, precision and describing config."""

    path: Path
    config: dict  # the full experiment config that built the architecture
    summary: dict
    state: dict[str, Tensor]
    masks: dict[str, Tensor] | None = None
    bits: int | None = None  # weight bits of a quantized model (None: float)
    act_bits: int | None = None
    act_layers: list[str] = field(default_factory=list)
    steps: dict[str, Tensor] | None = None  # learned QAT steps per layer
    targets: list[str] | None = None  # the quantized weights, when recorded
    masks_path: Path | None = None

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    @property
    def density(self) -> float:
        """Nonzero share of the prunable weights (the masked ones, else every Conv/Linear
        weight), measured on the stored weights."""
        names = list(self.masks) if self.masks else [
            n for n, t in self.state.items()
            if t.is_floating_point() and t.dim() >= 2 and n.endswith("weight")]
        numel = sum(self.state[n].numel() for n in names)
        return sum(int(self.state[n].count_nonzero()) for n in names) / max(1, numel)

    @property
    def mask_density(self) -> float | None:
        if not self.masks:
            return None
        return sum(int(m.sum()) for m in self.masks.values()) / sum(
            m.numel() for m in self.masks.values())

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the weights into ``model`` (the architecture of :attr:`config`), first adding
        the activation quantizers the stored model has; returns the model."""
        if self.act_layers:
            insert_activation_quantizers(model, self.act_bits or 8, layers=self.act_layers)
        model.load_state_dict(self.state, strict=True)
        return model

    def mask_set(self, model: nn.Module) -> MaskSet | None:
        """The masks as a :class:`MaskSet` checked against ``model`` and on its device, in
        their saved order (None when unpruned)."""
        if self.masks_path is None:
            return None
        return MaskSet.load(self.masks_path, model)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def deployed(path: str | Path) -> Deployed:
    """The deployed model of the finished stage or run at ``path`` (one ConfigError when
    there is none, naming what to give instead)."""
    src = locate(path)
    summary = src.summary
    masks = read_state_dict(src.masks) if src.masks is not None else None
    out = Deployed(src.path, src.config, summary, read_state_dict(src.weights), masks,
                   bits=src.bits, act_bits=src.act_bits, act_layers=list(src.act_layers),
                   steps=src.steps, targets=src.targets, masks_path=src.masks)
    if summary.get("stage") == QUANTIZE_STAGE:
        record = _read_json(src.path / "quant_record.json")
        out.bits = int(summary["bits"])
        out.act_layers = list(summary.get("act_layers") or [])
        out.act_bits = summary.get("act_bits") if out.act_layers else None
        out.targets = list(record.get("weights", {})) or None
    elif out.bits is None and summary.get("precision_mode") in ("ptq", "qat"):
        # a method that quantized its own model (the precision section inside training)
        out.bits = int(summary["weight_bits"])
        out.act_layers = input_quantized_layers(out.state)
        out.act_bits = summary.get("act_bits") if out.act_layers else None
    return out


def deployed_bytes(state: dict[str, Tensor], bits: int | None = None,
                   targets: list[str] | None = None) -> dict[str, int]:
    """Bytes of ``state`` as files: ``bytes_float`` (plain safetensors, every tensor dense)
    and ``bytes_deployed`` (the exporter's compact layout; with ``bits``, the ``targets``
    weights, default every float weight of 2 or more dimensions, as integer codes)."""
    if bits is not None and targets is None:
        targets = [n for n, t in state.items()
                   if t.is_floating_point() and t.dim() >= 2 and n.endswith("weight")]
    quantized = set(targets or []) if bits is not None else set()
    entries = []
    for name, t in state.items():
        grid = recover_grid(t, bits) if name in quantized else None
        if grid is not None:
            entries.append((name, *encode_quantized(name, *grid, bits, t.dtype)))
        else:
            entries.append((name, *encode(name, t)))
    return {"bytes_float": len(safetensors_bytes(state, {"format": "pt"})),
            "bytes_deployed": len(export_bytes(entries))}
