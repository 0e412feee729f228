"""The model card of an export: what the model is, how small, how good, where it came from.

Written twice: ``model_card.json`` (for programs) and ``model_card.md`` (for people).
"""

from __future__ import annotations

from typing import Any

import yaml
from torch import Tensor

from ..runs.deployed import RunModel
from ..runs.headline import headline

CARD_FORMAT = "underbudget-model-card"
METRIC_SUFFIXES = ("_acc", "_ece", "_nll", "_loss", "_brier")


def prunable_names(state: dict[str, Tensor], masks: dict[str, Tensor] | None) -> list[str]:
    """The weights density is measured on: the masked ones, else every Conv/Linear-like
    weight (floating, at least 2-D, named ``*weight``)."""
    if masks:
        return [n for n in state if n in masks]
    return [n for n, t in state.items()
            if t.is_floating_point() and t.dim() >= 2 and n.endswith("weight")]


def density(state: dict[str, Tensor], masks: dict[str, Tensor] | None) -> dict:
    """Measured nonzero fractions: over the prunable weights, per layer, over everything."""
    names = prunable_names(state, masks)
    nnz = {n: int(state[n].count_nonzero()) for n in names}
    numel = {n: state[n].numel() for n in names}
    floats = [t for t in state.values() if t.is_floating_point()]
    total = sum(t.numel() for t in floats)
    out = {
        "prunable": sum(nnz.values()) / max(1, sum(numel.values())),
        "all_parameters": sum(int(t.count_nonzero()) for t in floats) / max(1, total),
        "layers": {n: nnz[n] / max(1, numel[n]) for n in names},
        "mask": None,
    }
    if masks:
        kept = sum(int(m.sum()) for m in masks.values())
        out["mask"] = kept / max(1, sum(m.numel() for m in masks.values()))
    return out


def _metrics(summary: dict) -> dict:
    head = headline(summary)
    out: dict[str, Any] = {"accuracy": head["accuracy"], "ece": head["ECE"],
                           "cer": head["CER"], "density": head["density"]}
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                key.endswith(METRIC_SUFFIXES) or key.startswith("cer")):
            out[key] = value
    return out


def make_card(src: RunModel, arch: dict, state: dict[str, Tensor],
              masks: dict[str, Tensor] | None, quant: dict | None, files: dict[str, dict]) -> dict:
    """The card as a JSON-able dict."""
    data = src.config.get("data") or {}
    method = src.config.get("method") or {}
    return {
        "format": CARD_FORMAT, "format_version": 1,
        "run": str(src.path), "name": src.config.get("name"),
        "method": method.get("name") if isinstance(method, dict) else method,
        "variant": src.summary.get("variant"), "seed": src.config.get("seed"),
        "architecture": arch,
        "files": files,
        "density": density(state, masks),
        "quantization": quant,
        "metrics": _metrics(src.summary),
        "data": {"name": data.get("name"), "limit": data.get("limit"),
                 "test_limit": data.get("test_limit"), "fraction": data.get("fraction"),
                 "kshot": data.get("kshot"), "val_fraction": data.get("val_fraction"),
                 "train_examples": src.summary.get("train_examples")},
        "parents": src.parents,
        "versions": src.env.get("versions"), "git": src.env.get("git"),
        "config": src.config,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def card_markdown(card: dict) -> str:
    """The card for people."""
    a, d, q, m = card["architecture"], card["density"], card["quantization"], card["metrics"]
    shape = (f"{a['in_channels']}x{a['image_size']}x{a['image_size']} input, "
             f"{a['num_classes']} classes, " if a["verified"] else "")
    what = card["method"] + (f" (variant {card['variant']})" if card["variant"] else "")
    budget = ", ".join(f"{k} {v}" for k, v in card["data"].items() if v not in (None, 0.0))
    bits = (f"{q['bits']}-bit integers, {q['scheme']}" if q else "float")
    lines = [
        f"# Model card: {card['name']}", "",
        "| | |", "|---|---|",
        f"| run | `{card['run']}` |",
        f"| method | {what}, seed {card['seed']} |",
        f"| architecture | `{a['model']}` {a['kwargs'] or ''} {shape}{a['parameters']:,} "
        "parameters |",
        f"| accuracy | {_pct(m['accuracy'])} |",
        f"| ECE | {_pct(m['ece'])} |",
    ]
    if m["cer"] is not None:
        lines.append(f"| CER | {_pct(m['cer'])} |")
    lines += [
        f"| density | {_pct(d['prunable'])} of prunable weights "
        f"({_pct(d['all_parameters'])} of all) |",
        f"| weights | {bits} |",
        f"| data | {budget} |",
        f"| parent runs | {', '.join(f'`{p}`' for p in card['parents']) or '-'} |",
        "", "## Files", "", "| form | file | bytes | of dense |", "|---|---|---:|---:|",
    ]
    dense = card["files"]["dense"]["bytes"]
    for form, f in card["files"].items():
        lines.append(f"| {form} | `{f['file']}` | {f['bytes']:,} | {f['bytes'] / dense:.1%} |")
    lines += ["", "## Density per layer (measured on the weights)", "",
              "| layer | density |", "|---|---:|"]
    lines += [f"| `{n}` | {_pct(v)} |" for n, v in d["layers"].items()]
    if q:
        lines += ["", "## Quantized layers", "", "| layer | bits | levels used |",
                  "|---|---:|---:|"]
        lines += [f"| `{n}` | {v['bits']} | {v['levels_used']} |" for n, v in q["layers"].items()]
    plan = card.get("inference")
    if plan and plan["sparse_layers"]:
        kernels = "native" if plan["native_kernels"] else "torch"
        lines += ["", f"## Inference (CPU, batch {plan['batch_size']}, {kernels} kernels, "
                  "at export)", "", "| layer | form |", "|---|---|"]
        lines += [f"| `{n}` | {f}" + (" + ReLU + pool" if n in plan["fused_layers"] else "")
                  + " |" for n, f in plan["sparse_layers"].items()]
    best = list(card["files"].values())[-1]["file"]
    lines += ["", "## Loading", "", "```python", "from underbudget.export import load_model, "
              "read_export", "", 'state = read_export("' + best + '")  # the exact state dict']
    if a["verified"]:
        lines.append('model = load_model(".")  # the plain architecture with these weights')
        lines.append('fast = load_model(".", sparse=True)  # sparse kernels where they win')
    lines += ["```", "", "## Config", "", "```yaml",
              yaml.safe_dump(card["config"], sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
