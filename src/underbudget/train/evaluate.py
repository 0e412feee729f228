"""Evaluation over a whole loader: loss, accuracy, error count, optionally all logits.

The pass runs under ``torch.inference_mode``, accumulates loss and correct count on the device
(one host synchronisation at the end, not one per batch), on a CPU runs the model's
inference form (:mod:`.inference_form`: the same function, cheaper) and, for an in-memory
:class:`~underbudget.data.Loader` without augmentation, re-cuts the set into batches sized to
the device (large on a GPU; cache-sized on a CPU, where big batches are slower).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from underbudget.data.loader import Loader
from underbudget.train.inference_form import inference_form, rewrites, sparse_kernels_help

# Largest evaluation batch chosen automatically on CUDA, and the share of free device memory
# the float input batch may take (activations of a conv net are a few dozen times the input).
CUDA_MAX_BATCH = 8192
CUDA_INPUT_SHARE = 1 / 256
# On a CPU, batches past a few hundred images leave the cache: LeNet-5 and ConvNet evaluate
# Fashion-MNIST 1.3x faster in batches of 256 than of 1000 (benchmarks/bench_eval.py).
CPU_MAX_BATCH = 256


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled, a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_batch_size(loader, device: torch.device, requested: int | None = None) -> int | None:
    """The batch size an evaluation pass over ``loader`` uses, or None to keep the loader's.

    Only an in-memory :class:`Loader` with no augmentation and ``drop_last=False`` can be
    re-cut (the result is then the same set of examples in the same order). ``requested``
    wins when given; otherwise CUDA gets the largest batch whose float input fits in
    ``CUDA_INPUT_SHARE`` of the free memory (at most ``CUDA_MAX_BATCH``), and a CPU at most
    ``CPU_MAX_BATCH`` (cache-sized batches).
    """
    if not isinstance(loader, Loader) or loader.augment is not None or loader.drop_last:
        return None
    if requested is not None:
        return max(1, int(requested))
    if device.type != "cuda":
        return CPU_MAX_BATCH if loader.batch_size > CPU_MAX_BATCH else None
    per_example = 4 * max(1, loader.images[0].numel())
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except RuntimeError:
        return None
    fit = int(free * CUDA_INPUT_SHARE) // per_example
    size = min(CUDA_MAX_BATCH, loader.num_examples, max(loader.batch_size, fit))
    return size if size > loader.batch_size else None


def _rebatched(loader, size: int | None):
    if size is None or size == loader.batch_size:
        return loader
    out = copy.copy(loader)  # shares the device tensors; only the cut differs
    out.batch_size = size
    return out


def _uses_channels_last(model: torch.nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            cl, plain = p.is_contiguous(memory_format=torch.channels_last), p.is_contiguous()
            if cl != plain:  # (one input channel or 1x1 maps fit both layouts: look further)
                return cl
    return False


def _has_conv2d(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


@contextlib.contextmanager
def _channels_last_weights(model: torch.nn.Module):
    """4-d weights in channels-last for the pass; afterwards the very same tensors are back."""
    saved = []
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4 and p.is_contiguous():
                saved.append((p, p.data))
                # restride explicitly: with one input channel ``.contiguous(channels_last)``
                # keeps NCHW strides, and oneDNN picks its layout from the strides
                p.data = torch.empty_like(p.data, memory_format=torch.channels_last).copy_(p.data)
    try:
        yield
    finally:
        for p, data in saved:
            p.data = data


def channels_last_plan(model: torch.nn.Module, device: torch.device, forward,
                       requested: bool | None) -> tuple[bool, bool]:
    """(channels-last inputs, channels-last weights for the pass only) for an evaluation.

    ``requested`` True/False is obeyed for the inputs. None is "where it helps": inputs follow
    a model already in channels-last; on a CPU, a conv net's weights are also switched for the
    pass (oneDNN convolutions and pooling run faster in that layout) unless ``forward`` is a
    compiled module, whose guards would recompile on the layout change.
    """
    if requested is not None:
        return bool(requested), False
    if _uses_channels_last(model):
        return True, False
    compiled = getattr(forward, "_orig_mod", None) is not None
    if device.type == "cpu" and not compiled and _has_conv2d(model):
        return True, True
    return False, False


def _one_pass(forward: Callable, loader: Iterable, device: torch.device, amp: bool,
              return_logits: bool, channels_last: bool) -> dict:
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    all_logits: list[torch.Tensor] = []
    all_labels: list[torch.Tensor] = []
    with torch.inference_mode():
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits = forward(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.numel()
            if return_logits:  # kept on the device until the end: no copy per batch
                all_logits.append(logits)
                all_labels.append(y)
    # outside inference mode, so the returned tensors work with autograd (e.g. calibration)
    n_correct = int(correct.item())
    out = {
        "loss": float(loss_sum.item()) / max(1, n),
        "acc": n_correct / max(1, n),
        "errors": n - n_correct,
        "n": n,
    }
    if return_logits:
        out["logits"] = torch.cat(all_logits).cpu() if all_logits else torch.empty(0)
        out["labels"] = (torch.cat(all_labels).cpu() if all_labels
                         else torch.empty(0, dtype=torch.long))
    return out


SPARSE_MIN_EXAMPLES = 1024


def _inference_model(model: torch.nn.Module, forward, device: torch.device,
                     requested: bool | None, batch_size: int | None,
                     loader=None) -> torch.nn.Module | None:
    """The model's inference form for this pass, or None to evaluate ``model`` as it is.

    None (the default) is "where it helps": on a CPU, when the pass runs the model itself
    (not a compiled or custom forward) and the form changes something; pruned layers then
    run sparse kernels where they win at this pass's batch size, for a pass over at least
    ``SPARSE_MIN_EXAMPLES`` examples (a known count): building the sparse form costs about
    what the kernels save on 500 examples of a small conv net.
    """
    if requested is False or (forward is not None and forward is not model):
        return None
    examples = getattr(loader, "num_examples", None)
    sparse = (examples is not None and examples >= SPARSE_MIN_EXAMPLES
              and sparse_kernels_help(model, device))
    if requested is None and (device.type != "cpu" or not (rewrites(model) or sparse)):
        return None
    return inference_form(model, sparse=sparse, batch_size=batch_size or 256)


def evaluate(model: torch.nn.Module, loader, *, device: torch.device | str | None = None,
             amp: bool = False, return_logits: bool = False, forward=None,
             channels_last: bool | None = False, batch_size: int | None = None,
             inference: bool | None = None) -> dict:
    """Loss, accuracy and error count of ``model`` over every batch of ``loader``.

    Sums are accumulated over the whole set (never averaged per batch). With
    ``return_logits`` the float32 logits and labels are returned too (on the CPU, for
    calibration). ``forward`` replaces ``model(x)`` (e.g. a compiled model); ``channels_last``
    converts 4-d inputs (None: where it helps, see :func:`channels_last_plan`);
    ``batch_size`` re-cuts an in-memory loader (default: sized to the device, see
    :func:`eval_batch_size`); ``inference`` evaluates the model's inference form (max-pools
    by element-wise maxima, batch norm folded into the convolution before it; see
    :mod:`.inference_form`; None: on a CPU, where it changes something).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = eval_batch_size(loader, device, batch_size)
    fast = _inference_model(model, forward, device, inference,
                            size or getattr(loader, "batch_size", None), loader)
    if fast is not None:
        model = forward = fast
    forward = forward if forward is not None else model
    inputs_cl, weights_cl = channels_last_plan(model, device, forward, channels_last)
    was_training = model.training
    model.eval()
    layout = _channels_last_weights(model) if weights_cl else contextlib.nullcontext()
    try:
        with layout:
            while True:
                try:
                    return _one_pass(forward, _rebatched(loader, size), device, amp,
                                     return_logits, inputs_cl)
                except torch.cuda.OutOfMemoryError:
                    if size is None or batch_size is not None:
                        raise
                    torch.cuda.empty_cache()  # the automatic size was too large: halve it
                    size = size // 2 if size // 2 > loader.batch_size else None
    finally:
        model.train(was_training)
