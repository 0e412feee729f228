"""Evaluation over a whole loader: loss, accuracy, error count, optionally all logits."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled, a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, *, device: torch.device | str | None = None,
             amp: bool = False, return_logits: bool = False, forward=None,
             channels_last: bool = False) -> dict:
    """Loss, accuracy and error count of ``model`` over every batch of ``loader``.

    Sums are accumulated over the whole set (never averaged per batch). With
    ``return_logits`` the float32 logits and labels are returned too (for calibration).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    forward = forward if forward is not None else model
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    all_logits, all_labels = [], []
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits = forward(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            n += y.numel()
            if return_logits:
                all_logits.append(logits.cpu())
                all_labels.append(y.cpu())
    finally:
        model.train(was_training)
    n_correct = int(correct.item())
    out = {
        "loss": float(loss_sum.item()) / max(1, n),
        "acc": n_correct / max(1, n),
        "errors": n - n_correct,
        "n": n,
    }
    if return_logits:
        out["logits"] = torch.cat(all_logits) if all_logits else torch.empty(0)
        out["labels"] = torch.cat(all_labels) if all_labels else torch.empty(0, dtype=torch.long)
    return out
