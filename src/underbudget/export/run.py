"""``underbudget export RUN``: the deployed model in its compact forms, and its model card.

Forms written to ``RUN/export/`` (or ``--out``), each a safetensors file:

- ``dense.safetensors``: the plain state dict (``torch.nn.Module.load_state_dict`` reads it);
- ``sparse.safetensors``: every tensor in its smallest layout (dense, bitmask or CSR), when
  that is smaller than dense (a pruned run);
- ``quantized.safetensors``: for a quantized run, the weights as integer codes with one scale
  per output channel (recovered exactly from the stored float grid), the rest as in sparse.

Every form is decoded and compared with the run's weights before anything is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file

from ..deploy import native, to_sparse
from ..errors import CheckpointError, ConfigError
from ..models import read_state_dict
from ..runs.architecture import architecture, build_model
from ..runs.deployed import RunModel, locate
from ..runs.preflight import check_folder
from ..utils.atomic import clean_stale_temps, write_bytes, write_text
from ..utils.tensorfile import safetensors_bytes
from .card import card_markdown, make_card
from .grid import levels_used, recover_grid
from .layout import decode, encode, encode_quantized, export_bytes, read_export

FORMS = ("dense", "sparse", "quantized")
CARD_JSON, CARD_MD = "model_card.json", "model_card.md"


@dataclass
class ExportResult:
    """What an export wrote: the folder, each form's file and bytes on disk, the card."""

    out: Path
    files: dict[str, Path]
    sizes: dict[str, int]
    card: dict


def _quant_targets(src: RunModel, state: dict[str, torch.Tensor]) -> list[str]:
    if src.targets:
        return [n for n in src.targets if n in state]
    if src.steps:
        return [f"{m}.weight" for m in src.steps if f"{m}.weight" in state]
    return [n for n, t in state.items()
            if t.is_floating_point() and t.dim() >= 2 and n.endswith("weight")]


def _quantized_entries(src: RunModel, state: dict[str, torch.Tensor]):
    """Entries of the quantized form and the card's per-layer record."""
    targets = set(_quant_targets(src, state))
    entries, layers, floats = [], {}, []
    for name, t in state.items():
        grid = None
        if name in targets:
            step = (src.steps or {}).get(name.removesuffix(".weight"))
            grid = recover_grid(t, src.bits, step=step)
            if grid is None:
                floats.append(name)
        if grid is None:
            entries.append((name, *encode(name, t)))
            continue
        codes, scales = grid
        entries.append((name, *encode_quantized(name, codes, scales, src.bits, t.dtype)))
        layers[name] = {"bits": src.bits, "levels_used": levels_used(codes),
                        "channels": int(scales.numel())}
    if not layers:
        raise CheckpointError(
            f"{src.path} is a {src.bits}-bit run but none of its weights lies on a symmetric "
            "per-output-channel grid; its weights file may have been replaced")
    record = {"bits": src.bits, "scheme": "symmetric, one scale per output channel",
              "codes": "int8" if src.bits <= 8 else "int16", "layers": layers,
              "float_layers": floats,
              "activations": {"bits": src.act_bits, "layers": src.act_layers}
              if src.act_layers else None}
    return entries, record


def _check(form: str, data: bytes, entries, state: dict[str, torch.Tensor]) -> None:
    """Decode ``data`` and compare it with ``state`` value for value (a bug guard)."""
    tensors = load_bytes(data)
    specs = {n: s for n, _, s in entries} if entries is not None else None
    for name, want in state.items():
        got = tensors[name] if specs is None else decode(name, specs[name], tensors)
        if got.dtype != want.dtype or not torch.equal(got, want):
            raise RuntimeError(f"the {form} form does not reproduce {name!r}; please report")


def export_run(run: str | os.PathLike, out: str | os.PathLike | None = None) -> ExportResult:
    """Export the finished run at ``run`` into ``out`` (default ``RUN/export``)."""
    src = locate(run)
    if out is not None and not str(out).strip():
        raise ConfigError("--out is empty; name the export folder, or leave --out out for "
                          "RUN/export")
    out_dir = check_folder(Path(out) if out else src.path / "export", "the export folder")
    state = read_state_dict(src.weights)
    arch = architecture(src, state)
    order = arch.pop("order")
    if order:  # the model's own order, not the file's alphabetical one
        state = {k: state[k] for k in order}
    masks = load_file(str(src.masks)) if src.masks is not None else None
    forms: dict[str, bytes] = {"dense": safetensors_bytes(state, {"format": "pt"})}
    _check("dense", forms["dense"], None, state)
    sparse = [(n, *encode(n, t)) for n, t in state.items()]
    data = export_bytes(sparse)
    if len(data) < len(forms["dense"]):
        forms["sparse"] = data
        _check("sparse", data, sparse, state)
    quant = None
    if src.bits:
        entries, quant = _quantized_entries(src, state)
        forms["quantized"] = export_bytes(entries, {"bits": str(src.bits)})
        _check("quantized", forms["quantized"], entries, state)
    files = {form: {"file": f"{form}.safetensors", "bytes": len(data)}
             for form, data in forms.items()}
    card = make_card(src, arch, state, masks, quant, files)
    card["inference"] = inference_plan(arch, state)
    clean_stale_temps(out_dir)
    written = {}
    for form in FORMS:
        path = out_dir / f"{form}.safetensors"
        if form in forms:
            write_bytes(path, forms[form])
            written[form] = path
        else:
            path.unlink(missing_ok=True)  # from an earlier export of another kind of run
    write_text(out_dir / CARD_JSON, json.dumps(card, indent=2, default=str) + "\n")
    write_text(out_dir / CARD_MD, card_markdown(card))
    sizes = {form: path.stat().st_size for form, path in written.items()}
    return ExportResult(out_dir, written, sizes, card)


def inference_plan(arch: dict, state: dict, batch_size: int = 256) -> dict | None:
    """Which layers the deploy form runs on sparse kernels on this machine (CPU, threshold
    rule, ``batch_size`` examples), and which convolutions it fuses; None when the card cannot
    build the architecture."""
    if not arch.get("verified"):
        return None
    model = build_model(arch)
    model.load_state_dict(state, strict=True)
    deployed = to_sparse(model, kxk=True, batch_size=batch_size, device="cpu")
    return {"device": "cpu", "batch_size": batch_size, "native_kernels": native.available(),
            "sparse_layers": {c.name: c.form for c in deployed.sparse_choices
                              if c.form != "dense"},
            "fused_layers": list(deployed.fused_layers)}


def load_model(export_dir: str | os.PathLike, device: str | torch.device = "cpu",
               sparse: bool = False, batch_size: int = 256) -> torch.nn.Module:
    """The plain architecture of an export, built from its card, holding its weights.

    With ``sparse``, its deploy form instead (:func:`underbudget.deploy.to_sparse`): sparse
    kernels where the threshold rule says they win for ``batch_size`` examples on ``device``,
    with conv-ReLU-pool fusion; the same logits up to float rounding.
    """
    folder = Path(export_dir)
    try:
        card = json.loads((folder / CARD_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(f"{folder} holds no {CARD_JSON}; export a run into it with "
                              "'underbudget export RUN --out DIR'") from None
    arch = card["architecture"]
    if not arch.get("verified"):
        raise CheckpointError(f"the card in {folder} could not pin down the architecture; "
                              "build the model yourself and load read_export(FILE) into it")
    model = build_model(arch)
    form = next(f for f in reversed(FORMS) if f in card["files"])
    model.load_state_dict(read_export(folder / card["files"][form]["file"]), strict=True)
    if sparse:
        return to_sparse(model, kxk=True, batch_size=batch_size, device=device)
    return model.to(device)
