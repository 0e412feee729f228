"""The source stage: train the source model once (or load its weights) and keep it.

The stage is the child run ``source/``. Its artifacts are the final weights
(``model.safetensors``) and the weights IMP rewinds to (``rewind.safetensors``: the weights
after ``method.imp_rewind_epoch`` epochs of source training, or the initial ones for 0). A
finished source run is never trained again; its weights are loaded.
"""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from ...metrics import calibration_report
from ...models import load_weights, read_state_dict, save_weights
from ...train import Trainer
from ...train.evaluate import evaluate
from ...utils.seeding import seed_everything
from ..common import build_model
from ..lottery import RewindSaver
from .context import Context

SOURCE = "source"


def fresh_model(ctx: Context) -> nn.Module:
    """The source architecture with its seeded initial weights (no weights file loaded)."""
    model_cfg = dataclasses.replace(ctx.cfg.model, weights=None)
    return build_model(ctx.cfg, ctx.source, model_cfg=model_cfg)


def source_calibration(ctx: Context, model: nn.Module) -> dict:
    """Accuracy and calibration of ``model`` on the source test set."""
    return test_calibration(
        model, ctx.source_eval_loader("test"), ctx.device, ctx.method.n_bins,
        ctx.method.ece_binning,
    )


def test_calibration(
    model: nn.Module, loader, device, n_bins: int = 15, binning: str = "default"
) -> dict:
    """``source_test_*`` accuracy, loss, ECE and NLL of ``model`` on an ordered ``loader``."""
    out = evaluate(model, loader, device=device, return_logits=True)
    rep = calibration_report(out["logits"], out["labels"], n_bins, binning=binning)
    return {
        "source_test_acc": out["acc"],
        "source_test_loss": out["loss"],
        "source_test_ece": rep["ece"],
        "source_test_nll": rep["nll"],
        "source_test_n": out["n"],
    }


def source_stage(ctx: Context) -> tuple[nn.Module, dict]:
    """The trained (or loaded) source model on the device, and the source run's summary."""
    child = ctx.run.child(SOURCE)
    weights = child.artifact("model.safetensors")
    if child.is_finished() and weights.exists():
        model = load_weights(fresh_model(ctx), weights).to(ctx.device)
        return model, child.read_summary()
    cfg = ctx.cfg
    ctx.start_child(child, "source")
    seed_everything(cfg.seed)  # the source is trained as the train method trains a model
    t0 = time.perf_counter()
    model = fresh_model(ctx)
    rewind = child.artifact("rewind.safetensors")
    summary: dict = {"part": "source", "trained": not cfg.model.weights}
    if cfg.model.weights:
        load_weights(model, cfg.model.weights)
        model.to(ctx.device)
        save_weights(model, rewind)
        summary["weights_from"] = str(cfg.model.weights)
    else:
        if ctx.method.imp_rewind_epoch == 0:
            save_weights(model, rewind)
        loader = ctx.source_train_loader("train")
        # the end of epoch E is optimizer step E x (steps per epoch): IMP's late-rewind point
        callbacks = [RewindSaver(ctx.method.imp_rewind_epoch * len(loader), rewind)]
        trainer = Trainer(model, cfg.optim, cfg.train, run=child, callbacks=callbacks)
        val = ctx.source_eval_loader("val") if ctx.source.val is not None else None
        result = trainer.fit(loader, cfg.train.epochs, val_loader=val)
        trainer.finish()
        model = trainer.model
        summary.update(
            {
                k: v
                for k, v in result.items()
                if k.startswith("val_")
                or k in ("epochs_run", "selected_epoch", "selection", "steps")
            }
        )
    summary.update(source_calibration(ctx, model))
    summary["train_examples"] = len(ctx.source.train)
    summary["num_parameters"] = sum(p.numel() for p in model.parameters())
    summary["time"] = time.perf_counter() - t0
    save_weights(model, weights)
    child.write_summary(summary)
    return model, summary


def rewind_weights(ctx: Context) -> dict[str, torch.Tensor]:
    """The state dict IMP rewinds to (saved by the source stage)."""
    return read_state_dict(ctx.run.child(SOURCE).artifact("rewind.safetensors"))
