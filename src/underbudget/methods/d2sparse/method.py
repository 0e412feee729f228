"""``d2sparse``: train F and S together on the (budgeted) data; deploy and report S alone."""

from __future__ import annotations

from typing import Any

from ...config import ExperimentConfig
from ...models import save_weights
from ...runs import Run
from ...sparsity import cost, training_flops
from ...train import resolve_device
from ...train.callbacks import Callback
from ...train.evaluate import evaluate
from ...utils.seeding import derive_seed
from ..common import build_model, eval_loader, make_trainer, prepare_data, train_loader
from ..registry import register_method
from ..sparse_setup import TrainingFlops
from .build import DualSetup, build_dual
from .config import D2SparseConfig
from .report import report_d2sparse


class FastEval(Callback):
    """At the end of a stage, evaluate F too and add ``fast_<set>_acc/loss/errors``."""

    name = "d2_fast_eval"

    def __init__(self, setup: DualSetup, loaders: dict[str, Any]):
        self.setup, self.loaders = setup, loaders

    def after_stage(self, trainer: Any, stage: int, metrics: dict) -> None:
        if "fast" not in self.setup.masks:
            return
        forward = self.setup.forward_of("fast")
        for key, loader in self.loaders.items():
            res = evaluate(
                self.setup.model,
                loader,
                device=trainer.device,
                amp=getattr(trainer.cfg, "amp", False),
                forward=forward,
            )
            metrics.update({f"fast_{key}_{k}": res[k] for k in ("acc", "loss", "errors")})


def costs(setup: DualSetup, input_shape: tuple[int, ...], samples: int) -> dict[str, Any]:
    """Measured density and FLOPs of each network; training FLOPs of the whole run.

    Keys follow the ``train`` method's: ``flops_nonzero`` is one forward pass of the deployed
    S (nonzero-aware, per sample), ``train_flops`` counts 3x the masked forward FLOPs per
    sample for every network trained by SGD, plus 1x for S when it is an EMA of F (forward
    only); the RigL dense gradient at update steps is not counted. ``train_flops_dense`` is
    one dense network trained on the same samples, for reference.
    """

    out: dict[str, Any] = {}
    forward = {}
    for which in setup.networks:
        net, masks = setup.network(which)
        c = cost(net, input_shape, masks)
        forward[which], dense = TrainingFlops(masks, input_shape).forward_flops(net)
        tag = "" if which == "slow" else "fast_"
        for key in ("density", "density_all", "nonzeros", "flops_nonzero"):
            out[tag + key] = c[key]
        if which == "slow":
            for key in (
                "params",
                "prunable",
                "prunable_nonzeros",
                "flops_dense",
                "bytes_dense",
                "bytes_sparse",
            ):
                out[key] = c[key]
            out["mask_density"] = masks.density()
            out["train_flops_dense"] = training_flops(dense, samples)
    trained = [w for w in setup.networks if not (w == "slow" and setup.mode == "ema")]
    train = sum(training_flops(forward[w], samples) for w in trained)
    if setup.mode == "ema":
        train += training_flops(forward["slow"], samples, factor=1.0)
    out["train_flops"] = train
    out["train_samples"] = samples
    out["networks_trained"] = len(trained)
    return out


@register_method(
    "d2sparse",
    D2SparseConfig,
    "D2-Sparse: fast and slow dynamic sparse networks coupled through their "
    "outputs; S deployed alone",
    report=report_d2sparse,
)
def run_d2sparse(cfg: ExperimentConfig, run: Run) -> dict:
    """Train the pair, evaluate S (and F), save S alone with its masks, return the summary."""
    m: D2SparseConfig = cfg.method
    data = prepare_data(cfg, run)
    device = resolve_device(cfg.train.device)
    loader = train_loader(cfg, data.train, data.splits, device)
    epochs = cfg.train.epochs
    setup = build_dual(
        m,
        lambda key: build_model(cfg, data, seed_key=key),
        steps_per_epoch=len(loader),
        total_steps=epochs * len(loader),
        seed=derive_seed(cfg.seed, "d2sparse"),
        label_smoothing=cfg.train.label_smoothing,
    )
    evals = {"test": eval_loader(cfg, data.test, data.splits, device)}
    if m.eval_train:
        evals["train"] = eval_loader(cfg, data.train, data.splits, device)
    val = eval_loader(cfg, data.val, data.splits, device) if data.val is not None else None
    fast_sets = dict(evals, **({"val": val} if val is not None else {}))
    trainer = make_trainer(
        cfg,
        setup.model,
        run,
        callbacks=[*setup.callbacks, FastEval(setup, fast_sets)],
        loss_fn=setup.loss_fn,
        eval_forward=setup.eval_forward,
        params=setup.params,
    )
    result = trainer.fit(loader, epochs, val_loader=val, eval_loaders=evals)
    trainer.finish()

    deployed, masks = setup.deployed()
    save_weights(deployed, run.artifact("model.safetensors"))
    masks.save(run.artifact("masks.safetensors"), metadata={"network": "slow"})
    if m.save_fast and "fast" in setup.masks:
        fast, fast_masks = setup.network("fast")
        save_weights(fast, run.artifact("fast.safetensors"))
        fast_masks.save(run.artifact("fast_masks.safetensors"), metadata={"network": "fast"})

    summary = {k: v for k, v in result.items() if isinstance(v, (int, float, bool, str))}
    if "train_acc" in summary:
        summary["gap_train_test"] = summary["train_acc"] - summary["test_acc"]
    summary["train_examples"] = len(data.train)
    summary["budget"] = cfg.data.fraction if cfg.data.fraction is not None else 1.0
    summary["density_target"] = m.density
    summary["variant"] = setup.mode
    summary["coupling"] = m.consistency
    samples = int(result.get("epochs_run", epochs)) * len(data.train)
    summary.update(costs(setup, data.image_shape, samples))
    for which, interval in setup.intervals.items():
        summary[f"{which}_interval_steps"] = interval
    final = setup.evolution.measures()
    summary.update(
        {
            k: v
            for k, v in final.items()
            if k not in summary and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    return summary
