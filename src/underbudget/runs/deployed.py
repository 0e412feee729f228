"""Find what a finished run deployed: its weights, masks, quantization and describing config.

Supported run directories:

- a plain ``train`` run, an ``anytime`` run, a ``d2sparse`` run, a ``lottery`` level
  (``level-KK``) and any sweep member: weights in ``artifacts/model.safetensors``, masks (when
  pruned) in ``artifacts/masks.safetensors``;
- a ``compress_transfer`` variant (``variants/<name>``): its summary names the child holding
  the weights (``weights_run``: ``source``, ``imp/level-KK`` or the variant itself); PTQ and
  QAT variants carry the bit width, QAT ones the learned steps (``weight_steps.safetensors``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import ConfigError
from ..utils.yamlfile import load_yaml

SHOWN = 4


@dataclass
class RunModel:
    """Where a run's deployed model lives and what describes it."""

    path: Path
    summary: dict
    config: dict  # the full experiment config that built the model
    weights: Path
    masks: Path | None = None
    bits: int | None = None  # weight bits of a quantized run
    act_bits: int | None = None
    act_layers: list[str] = field(default_factory=list)
    steps: dict[str, torch.Tensor] | None = None  # learned QAT step per layer (module name)
    targets: list[str] | None = None  # names of the quantized weights, when recorded
    parents: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _full_config(path: Path) -> tuple[dict, Path] | None:
    """The nearest config.yaml at or above ``path`` that describes a model."""
    for here in [path, *path.parents]:
        cfg_path = here / "config.yaml"
        if cfg_path.is_file():
            values = load_yaml(cfg_path)
            if isinstance(values.get("model"), dict):
                return values, here
    return None


def _children(path: Path) -> list[str]:
    """Finished runs below ``path`` that have weights to export (relative names)."""
    out = []
    for summary in sorted(path.rglob("summary.json")):
        here = summary.parent
        if here != path and ((here / "artifacts" / "model.safetensors").is_file()
                             or "weights_run" in _read_json(summary)):
            out.append(here.relative_to(path).as_posix())
    return out


def locate(run: str | Path) -> RunModel:
    """The deployed model of the finished run at ``run`` (one ConfigError otherwise)."""
    path = Path(run)
    if not path.exists():
        raise ConfigError(f"no run at {run}; give a finished run directory")
    if not path.is_dir():
        raise ConfigError(f"{run} is a file; give a run directory")
    summary = _read_json(path / "summary.json")
    if not summary:
        raise ConfigError(f"{run} is not a finished run (no summary.json); finish it first "
                          "with the command that started it")
    if summary.get("status", "ok") != "ok":
        raise ConfigError(f"{run} did not finish normally ({summary.get('status')}); there "
                          "is no trained model to export")
    if "weights_run" in summary:
        return _variant(path, summary)
    weights = path / "artifacts" / "model.safetensors"
    if not weights.is_file():
        kids = _children(path)
        if not kids:
            raise ConfigError(f"{run} kept no weights (artifacts/model.safetensors); run it "
                              "with its weights saved to export it")
        more = f" and {len(kids) - SHOWN} more" if len(kids) > SHOWN else ""
        raise ConfigError(f"{run} holds several models; export one of them, e.g. "
                          f"{', '.join(str(path / k) for k in kids[:SHOWN])}{more}")
    found = _full_config(path)
    if found is None:
        raise ConfigError(f"{run} has no config.yaml describing its model; export the run "
                          "directory that holds it")
    parents = [str(p) for p in path.parents if (p / "config.yaml").is_file()]
    masks = path / "artifacts" / "masks.safetensors"
    return RunModel(path, summary, found[0], weights, masks if masks.is_file() else None,
                    parents=parents, env=_read_json(path / "env.json"))


def _variant(path: Path, summary: dict) -> RunModel:
    """A compress_transfer variant: ``<root>/variants/<name>``, weights in ``weights_run``."""
    root = path.parent.parent
    found = _full_config(root)
    if found is None:
        raise ConfigError(f"{path} names weights_run {summary['weights_run']!r} but "
                          f"{root} has no config.yaml; export it inside its compress_transfer run")
    config = found[0]
    holder = root / summary["weights_run"]
    weights = holder / "artifacts" / "model.safetensors"
    if not weights.is_file():
        raise ConfigError(f"{path}: its weights {weights} are missing; run the experiment "
                          "again to rebuild them")
    masks = holder / "artifacts" / "masks.safetensors"
    quantized = summary.get("kind") == "quant" or summary.get("family") in ("ptq", "qat")
    steps_file = holder / "artifacts" / "weight_steps.safetensors"
    record = _read_json(holder / "quant_record.json")
    parents = [str(root), str(root / "source")]
    parents += [str(holder)] if holder not in (path, root / "source") else []
    return RunModel(
        path, summary, config, weights,
        masks if masks.is_file() and not quantized else None,
        bits=int(summary["bits"]) if quantized and summary.get("bits") else None,
        act_bits=summary.get("act_bits"), act_layers=list(summary.get("act_layers") or []),
        steps=load_file(str(steps_file)) if quantized and steps_file.is_file() else None,
        targets=list(record.get("weights", {})) or None, parents=parents,
        env=_read_json(holder / "env.json"),
    )
