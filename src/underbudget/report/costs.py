"""Every run's costs on the same five axes, read from what the run recorded.

``run_costs(summary, config, run_dir)`` returns ``{train_flops, inference_flops,
deployed_bytes, examples_seen, wall_time}``; a value the run cannot tell is ``None``. The
FLOP and byte conventions are those of :mod:`underbudget.sparsity.cost` (one forward pass of
one sample, 1 multiply-add = 2 FLOPs, nonzero-aware):

- ``train_flops``: training FLOPs spent, as the run counted them step by step (3 x the
  forward FLOPs of the masks in force x the samples of each step): ``train_flops``, or an
  anytime run's ``total_train_flops`` (training steps; scoring and evaluation passes not
  included); a run that did not count them but whose saved model is dense (every prunable
  weight nonzero) gets ``training_flops(flops_dense, examples_seen)``, what the counter
  gives a dense run;
- ``inference_flops``: nonzero-aware FLOPs of one forward pass of the deployed model
  (``flops_nonzero``, or ``final_flops_nonzero``);
- ``deployed_bytes``: the deployed model stored in its cheapest sparse encoding at its weight
  bit width: the precision record's ``bytes_deployed`` (prunable weights at the bit width in
  the smallest of dense, bitmask and CSR, other parameters float32, one float32 step per
  quantized channel), else for a float model the cost module's ``bytes_sparse``; a quantized
  model (summary ``bits``/``weight_bits``, else ``precision.weight_bits``) without the
  record is measured by that rule;
- ``examples_seen``: training examples processed, repeats counted (``train_samples`` or
  ``examples_seen``, else ``train_examples`` x ``epochs_run``);
- ``wall_time``: seconds (``wall_time``, else ``time``, else ``stage_time``).

When the summary lacks the inference FLOPs or the bytes, they are measured with
:func:`underbudget.sparsity.cost` on the saved deployed weights and masks (the architecture
rebuilt as ``underbudget export`` does). Runs made of sub-runs add up their sub-runs'
training: a parent without its own ``train_flops`` or ``examples_seen`` gets the sum over the
finished sub-runs below it that hold no sub-runs themselves, when every one of them has the
value. A lottery parent deploys its last level (bytes from that level); a lottery level
``level-KK`` counts the training of levels 0..K, since its masks and weights come from them.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import to_dict
from ..errors import UnderbudgetError
from ..models import read_state_dict
from ..quant.in_training import precision_summary
from ..runs.architecture import architecture, build_model
from ..runs.deployed import RunModel, locate
from ..sections import PrecisionConfig
from ..sparsity import MaskSet, cost
from ..sparsity.cost import training_flops

AXES = ("train_flops", "inference_flops", "deployed_bytes", "examples_seen", "wall_time")

#: axis -> summary keys that hold it, first found wins (methods name them differently)
RECORDED: dict[str, tuple[str, ...]] = {
    "train_flops": ("train_flops", "total_train_flops"),
    "inference_flops": ("flops_nonzero", "final_flops_nonzero"),
    "examples_seen": ("train_samples", "examples_seen"),
    "wall_time": ("wall_time", "time", "stage_time"),
}
#: training axes that a parent adds up over its sub-runs (and a lottery level over levels)
SUMMED = ("train_flops", "examples_seen")
#: what a failed attempt to rebuild a saved model can raise (the value is then None)
_REBUILD_ERRORS = (UnderbudgetError, OSError, RuntimeError, KeyError, ValueError, TypeError)


def level_name(level: int) -> str:
    """The folder of lottery level ``level`` (as the lottery method names it)."""
    return f"level-{level:02d}"


def _number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _first(summary: dict, keys: tuple[str, ...]) -> float | None:
    return next((summary[k] for k in keys if _number(summary.get(k))), None)


def weight_bits(summary: dict, config: dict) -> int:
    """The deployed weights' bit width: the summary's ``bits`` or ``weight_bits``, else the
    precision section's ``weight_bits`` when it is on, else 32."""
    for key in ("bits", "weight_bits"):
        if _number(summary.get(key)):
            return int(summary[key])
    precision = config.get("precision") or {}
    if isinstance(precision, dict) and precision.get("mode", "none") != "none":
        return int(precision.get("weight_bits", 8))
    return 32


def recorded_costs(summary: dict, config: dict) -> dict[str, float | None]:
    """The five axes as far as the summary itself tells them (no file read)."""
    own = summary.get("costs")
    out = {axis: (own or {}).get(axis) if isinstance(own, dict) else None for axis in AXES}
    for axis, keys in RECORDED.items():
        if out[axis] is None:
            out[axis] = _first(summary, keys)
    if out["examples_seen"] is None and _number(summary.get("train_examples")) and _number(
            summary.get("epochs_run")):
        out["examples_seen"] = int(summary["train_examples"]) * int(summary["epochs_run"])
    if out["deployed_bytes"] is None:
        out["deployed_bytes"] = _first(summary, ("bytes_deployed",))
    if out["deployed_bytes"] is None and weight_bits(summary, config) == 32:
        out["deployed_bytes"] = _first(summary, ("bytes_sparse",))
    return out


def measured_cost(summary: dict, config: dict, run_dir: Path, bits: int) -> dict | None:
    """:func:`underbudget.sparsity.cost` of the run's saved deployed model, its
    ``bytes_sparse`` at ``bits`` (for ``bits`` < 32 as the precision record counts
    ``bytes_deployed``), or None when the run kept no weights or its architecture cannot be
    rebuilt from them."""
    try:
        if "weights_run" in summary:  # a compress_transfer variant: weights in another run
            src = locate(run_dir)
        else:
            weights = run_dir / "artifacts" / "model.safetensors"
            masks = run_dir / "artifacts" / "masks.safetensors"
            if not weights.is_file() or not isinstance(config.get("model"), dict):
                return None
            src = RunModel(run_dir, summary, config, weights,
                           masks if masks.is_file() else None)
        state = read_state_dict(src.weights)
        arch = architecture(src, state)
        if not arch["verified"] or not _number(arch["image_size"]):
            return None
        model = build_model(arch)
        model.load_state_dict(state)
        masks = MaskSet.load(src.masks, model) if src.masks is not None else None
        shape = (int(arch["in_channels"]), int(arch["image_size"]), int(arch["image_size"]))
        out = cost(model, shape, masks)
        if bits != 32:  # the precision record's rule (quant.in_training.precision_summary)
            precision = PrecisionConfig(mode="ptq", weight_bits=bits)
            out["bytes_sparse"] = precision_summary(model, precision, masks, shape)[
                "bytes_deployed"]
        return out
    except _REBUILD_ERRORS:
        return None


def nearest_config(run_dir: str | Path) -> dict:
    """The nearest ``config.yaml`` at or above ``run_dir`` that describes a model (a
    sub-run may keep none of its own), else {}."""
    run_dir = Path(run_dir)
    for here in (run_dir, *run_dir.parents):
        path = here / "config.yaml"
        if path.is_file():
            try:
                config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(config, dict) and isinstance(config.get("model"), dict):
                return config
    return {}


def _read_run(run_dir: Path) -> tuple[dict, dict] | None:
    """(summary, config) of the finished run at ``run_dir`` (see :func:`nearest_config`)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary, nearest_config(run_dir)


def leaf_runs(run_dir: Path) -> list[Path]:
    """Finished runs strictly below ``run_dir`` that hold no finished run below them."""
    found = sorted(p.parent for p in run_dir.rglob("summary.json") if p.parent != run_dir)
    return [p for p in found if not any(q != p and p in q.parents for q in found)]


def _sum_over(dirs: list[Path], axis: str) -> float | None:
    """The sum of ``axis`` over the runs at ``dirs``, None unless every one has it."""
    total = 0.0
    for path in dirs:
        read = _read_run(path)
        value = recorded_costs(*read)[axis] if read is not None else None
        if value is None:
            return None
        total += value
    return total if dirs else None


def _lottery_levels(summary: dict, run_dir: Path) -> list[Path] | None:
    """Levels 0..K of a lottery level ``level-KK`` (None when ``run_dir`` is not one)."""
    level = summary.get("level")
    if not isinstance(level, int) or isinstance(level, bool) or level < 1:
        return None
    if run_dir.name != level_name(level):
        return None
    dirs = [run_dir.parent / level_name(k) for k in range(level + 1)]
    return dirs if all((d / "summary.json").is_file() for d in dirs[:-1]) else None


def _as_dict(config: Any) -> dict:
    if isinstance(config, dict):
        return config
    if is_dataclass(config):
        try:
            return to_dict(config)
        except (TypeError, AttributeError):
            return asdict(config)
    return {}


def run_costs(summary: dict, config: Any, run_dir: str | Path) -> dict[str, float | None]:
    """The run's ``costs``: train_flops, inference_flops, deployed_bytes, examples_seen,
    wall_time (see the module docstring for where each comes from; None: unknown)."""
    run_dir = Path(run_dir)
    config = _as_dict(config)
    if not isinstance(config.get("model"), dict):
        config = nearest_config(run_dir) or config
    out = recorded_costs(summary, config)
    levels = _lottery_levels(summary, run_dir)
    if levels is not None:  # its weights and masks come from the levels before it
        earlier = levels[:-1]
        for axis in (*SUMMED, "wall_time"):
            before = _sum_over(earlier, axis)
            out[axis] = None if out[axis] is None or before is None else out[axis] + before
    subs = leaf_runs(run_dir) if run_dir.is_dir() else []
    for axis in SUMMED:
        if out[axis] is None and subs:
            out[axis] = _sum_over(subs, axis)
    table = summary.get("levels")
    if out["deployed_bytes"] is None and isinstance(table, list) and table:
        last = run_dir / level_name(int(table[-1].get("level", len(table) - 1)))
        read = _read_run(last)
        if read is not None:
            out["deployed_bytes"] = run_costs(read[0], read[1] or config, last)[
                "deployed_bytes"]
    dense_guess = out["train_flops"] is None and out["examples_seen"] is not None
    if out["inference_flops"] is None or out["deployed_bytes"] is None or dense_guess:
        measured = measured_cost(summary, config, run_dir, weight_bits(summary, config))
        if measured is not None:
            if out["inference_flops"] is None:
                out["inference_flops"] = float(measured["flops_nonzero"])
            if out["deployed_bytes"] is None:
                out["deployed_bytes"] = float(measured["bytes_sparse"])
            if dense_guess and measured["density"] == 1.0:  # dense: what TrainingFlops counts
                out["train_flops"] = training_flops(measured["flops_dense"], out["examples_seen"])
    return {axis: None if out[axis] is None else (
        int(out[axis]) if axis == "examples_seen" else float(out[axis])) for axis in AXES}
