"""Save nested state (dicts, lists, tensors, numbers) as safetensors, never pickle.

Tensors go into one ``.safetensors`` file under generated keys; the structure and every
non-tensor value go, as JSON, into that file's metadata. Dict keys that are not strings (optimizer
state is keyed by integers) and tuples are encoded explicitly so they round-trip exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ..errors import CheckpointError
from ..utils.tensorfile import write_safetensors


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    if "__dtype__" in obj:
        return getattr(torch, obj["__dtype__"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def save_tree(path: str | Path, tree: Any) -> None:
    """Write ``tree`` to ``path.safetensors`` in one atomic file.

    The structure (and every non-tensor value) is JSON in the file's metadata, so tensors and
    structure can never come from two different saves.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_encode(tree, tensors))
    write_safetensors(path.with_suffix(".safetensors"), tensors, {"underbudget_tree": structure})


def load_tree(path: str | Path) -> Any:
    """Read what :func:`save_tree` wrote; CheckpointError when missing or corrupt."""
    path = Path(path).with_suffix(".safetensors")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        structure = json.loads(meta["underbudget_tree"])
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); "
            "delete it to start the run again"
        ) from None
    return _decode(structure, tensors)


def tree_exists(path: str | Path) -> bool:
    """Whether a tree was written at ``path``."""
    return Path(path).with_suffix(".safetensors").exists()
