"""``train``: supervised training of any model on any dataset, dense or sparse.

Sparsity comes from the ``sparsity`` section: pruning at init (magnitude, random, SNIP,
GraSP, SynFlow), gradual magnitude pruning (cubic), static random ERK, or dynamic sparse
training (SET, RigL). With ``sparsity.method: none`` it is plain training.

``precision.mode: qat`` trains the LSQ-quantized model (``ptq`` quantizes it after training);
the deployed (converted) model is the one evaluated last, measured and saved. With
``stream.megabatches > 0`` the same training runs over that stream as the anytime strategy
that realises the ``sparsity`` section (see :mod:`.anytime.from_sections`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..config import ExperimentConfig, MethodConfig
from ..models import save_weights
from ..runs import Run
from .anytime.from_sections import anytime_experiment
from .anytime.run import run_anytime
from .common import build_model, eval_loader, make_trainer, prepare_data, train_loader
from .precision_setup import finish_model, first_inputs, prepare_model
from .registry import register_method
from .sparse_setup import check_sparsity, sparse_callbacks, sparse_summary


@dataclass
class TrainMethodConfig(MethodConfig):
    """Options of the plain training method."""

    name: str = "train"
    honours: ClassVar[tuple[str, ...]] = ("stream", "qat", "sections")
    save_weights: bool = True  # keep final weights (and masks) as safetensors artifacts
    eval_train: bool = False  # clean (un-augmented) training accuracy for the generalization gap

    def validate(self, cfg: ExperimentConfig) -> None:
        """Check the ``sparsity`` section this method applies (and the stream it runs over)."""
        check_sparsity(cfg.sparsity, stream=cfg.stream.enabled)
        if cfg.stream.enabled:
            streamed = anytime_experiment(cfg)
            streamed.method.check(streamed)


@register_method("train", TrainMethodConfig,
                 "supervised training, dense or sparse (prune at init, gradual, SET, RigL)")
def run_train(cfg: ExperimentConfig, run: Run) -> dict:
    """Train once; evaluate on validation (if any) and test; return the summary."""
    if cfg.stream.enabled:
        return run_anytime(cfg, run)
    data = prepare_data(cfg, run)
    model = prepare_model(cfg, build_model(cfg, data), cfg.sparsity.method != "none",
                          example=lambda: first_inputs(cfg, data.train, data.splits.mean,
                                                       data.splits.std, "cpu"))
    trainer = make_trainer(cfg, model, run)
    device = trainer.device
    loader = train_loader(cfg, data.train, data.splits, device)
    callbacks, masks = sparse_callbacks(cfg, trainer, data, loader)
    for cb in callbacks:
        trainer.add_callback(cb)
    evals = {"test": eval_loader(cfg, data.test, data.splits, device)}
    if cfg.method.eval_train:
        evals["train"] = eval_loader(cfg, data.train, data.splits, device)
    val = eval_loader(cfg, data.val, data.splits, device) if data.val is not None else None
    result = trainer.fit(loader, cfg.train.epochs, val_loader=val, eval_loaders=evals)
    trainer.finish()
    deployed, precision = finish_model(
        cfg, trainer.model, masks, data.image_shape, evals["test"], device)
    if cfg.method.save_weights:
        save_weights(deployed, run.artifact("model.safetensors"))
        if masks is not None:
            masks.save(run.artifact("masks.safetensors"))
    summary = {k: v for k, v in result.items() if isinstance(v, (int, float, bool, str))}
    if "train_acc" in summary:
        summary["gap_train_test"] = summary["train_acc"] - summary["test_acc"]
    summary["train_examples"] = len(data.train)
    summary.update(sparse_summary(deployed, masks, data))
    summary.update(precision)
    return summary
