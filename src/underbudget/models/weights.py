"""Read and write model weights: safetensors, or torch files loaded with weights_only=True."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from underbudget.errors import CheckpointError
from underbudget.models.classifier import classifier_of, model_label
from underbudget.utils.tensorfile import write_safetensors

NESTED_KEYS = ("state_dict", "model_state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
SHOWN = 4


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file on CPU, unwrapped and with wrapper prefixes kept.

    The format is recognised from the file's first bytes, not its suffix: safetensors, or a
    ``torch.save`` file loaded with ``weights_only=True`` (never unrestricted pickle). A state
    dict nested under 'state_dict', 'model_state_dict' or 'model' is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a readable safetensors file ({exc}); "
                "it may be truncated, so write it again"
            ) from None
    elif head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        obj = _torch_load(path)
    else:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is neither a safetensors nor a torch.save file; "
            "save weights with underbudget.models.save_weights or torch.save(model.state_dict())"
        )
    return _unwrap(obj, path)


def _torch_load(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:  # a file object: torch.load must not guess from the suffix
            return torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds Python objects besides tensors, which are not "
            "unpickled for safety (weights_only=True); re-save it with "
            "torch.save(model.state_dict(), path) or as safetensors"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read by torch.load ({exc}); "
            "it may be truncated or corrupt, so write it again"
        ) from None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict):
        nested = [k for k in NESTED_KEYS if isinstance(obj.get(k), dict)]
        if not nested:
            break
        obj = obj[nested[0]]
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(
        f"checkpoint {str(path)!r} holds no state dict (tensors by name, raw or under "
        f"{' / '.join(map(repr, NESTED_KEYS))}); save one with save_weights(model, path)"
    )


def _strip_wrappers(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict:
    """Remove DataParallel/DDP ('module.') and torch.compile ('_orig_mod.') key prefixes."""
    changed = True
    while changed and state:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(
                k.startswith(prefix) for k in model_keys
            ):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _fold_prune_pairs(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict:
    """Turn torch.nn.utils.prune's ``X_orig``/``X_mask`` pairs into ``X = X_orig * X_mask``."""
    for key in [k for k in state if k.endswith("_orig")]:
        base = key[: -len("_orig")]
        mask = f"{base}_mask"
        if mask in state and base not in state and base in model_keys:
            state[base] = state.pop(key) * state.pop(mask)
    return state


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    skip_mismatched_head: bool = False,
) -> nn.Module:
    """Load a checkpoint file into ``model`` (in place) and return the model.

    Accepts a raw state dict or one nested under 'state_dict'/'model'; strips 'module.' and
    '_orig_mod.' prefixes and folds torch.nn.utils.prune pairs. A checkpoint that does not fit
    (missing or unexpected keys, or a shape mismatch) raises one CheckpointError naming the
    file, the model and some offending keys. ``strict=False`` tolerates missing and unexpected
    keys (with a warning) but never a shape mismatch; ``skip_mismatched_head=True`` keeps the
    model's own classifier when the checkpoint's has another shape or is absent (transfer to a
    new number of classes).
    """
    expected = model.state_dict()
    keys = set(expected)
    state = _fold_prune_pairs(_strip_wrappers(read_state_dict(path), keys), keys)
    skipped: list[str] = []
    if skip_mismatched_head:
        head, _ = classifier_of(model)
        for key in (f"{head}.weight", f"{head}.bias"):
            if key in expected and (key not in state or state[key].shape != expected[key].shape):
                state.pop(key, None)
                skipped.append(key)
    missing = [
        k for k in expected
        if k not in state and k not in skipped and not k.endswith("num_batches_tracked")
    ]  # fmt: skip
    unexpected = [k for k in state if k not in keys]
    mismatched = [k for k in state if k in keys and state[k].shape != expected[k].shape]
    matched = [k for k in state if k in keys and k not in mismatched]
    if mismatched or not matched or (strict and (missing or unexpected)):
        raise CheckpointError(
            _mismatch_message(model, path, state, expected, missing, unexpected, mismatched)
        )
    if missing or unexpected:
        warnings.warn(
            f"loaded {str(path)!r} into {model_label(model)} with strict=False: "
            f"{len(missing)} missing key(s) {missing[:SHOWN]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:SHOWN]}",
            stacklevel=2,
        )
    model.load_state_dict(state, strict=False)
    return model


def _mismatch_message(model, path, state, expected, missing, unexpected, mismatched) -> str:
    parts = []
    if mismatched:
        shown = ", ".join(
            f"{k} checkpoint {_shape(state[k])} vs model {_shape(expected[k])}"
            for k in mismatched[:SHOWN]
        )
        parts.append(f"{len(mismatched)} shape mismatch(es): {shown}")
    if missing:
        shown = ", ".join(f"{k} {_shape(expected[k])}" for k in missing[:SHOWN])
        parts.append(f"{len(missing)} key(s) missing from the checkpoint: {shown}")
    if unexpected:
        shown = ", ".join(f"{k} {_shape(state[k])}" for k in unexpected[:SHOWN])
        parts.append(f"{len(unexpected)} key(s) not in the model: {shown}")
    if not parts:
        parts.append("no key of the checkpoint is a key of the model")
    return (
        f"checkpoint {str(path)!r} does not fit model {model_label(model)}: "
        + "; ".join(parts)
        + ". Build the architecture the checkpoint was saved from, or pass "
        "skip_mismatched_head=True (new classifier) or strict=False (ignore missing and "
        "unexpected keys)"
    )


def save_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s state dict as safetensors, atomically; return the path.

    Equal weights give byte-identical files (metadata keys in a fixed order).
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    write_safetensors(path, state, {"format": "pt", "model": model_label(model)})
    return path
