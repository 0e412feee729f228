"""The ``anytime`` method: one strategy trained over a stream of megabatches."""

from __future__ import annotations

import math

import torch
from safetensors.torch import save_file

from ...config import ExperimentConfig
from ...data import Loader
from ...metrics.anytime import anytime_summary
from ...models import save_weights
from ...runs import Run
from ...sparsity import Targets, cubic_density, progressive_densities
from ...train import resolve_device
from ...utils.atomic import atomic_path
from ...utils.seeding import derive_seed, generator
from ..common import build_model, eval_loader, make_trainer, prepare_data, train_loader
from .plan import StreamPlan, plan_stream
from .strategies import STRATEGIES, StreamContext, gmp_steps
from .stream_callback import StreamCallback


def _schedule(a, T: int) -> list[float]:
    if a.d_final is not None:
        return progressive_densities(T, d_start=a.d_start, d_final=a.d_final, shape=a.shape)
    return progressive_densities(T, tau=a.tau, d_start=a.d_start, shape=a.shape)


def _stage_steps(plan: StreamPlan, epochs: int, batch_size: int) -> list[int]:
    return [epochs * math.ceil(idx.numel() / batch_size) for idx in plan.stage_train]


def _scheduled(a, densities: list[float], steps: list[int]) -> list[float]:
    """What the strategy's density should be after each megabatch."""
    T = len(densities)
    if a.strategy in ("app", "imp"):
        return list(densities)
    if a.strategy == "dense":
        return [1.0] * T
    if a.strategy == "gmp":
        dt, n = gmp_steps(a, sum(steps))
        ends = [sum(steps[: b + 1]) for b in range(T)]
        return [cubic_density(e - e % dt, densities[-1], 1.0, 0, n, dt) for e in ends]
    return [densities[-1]] * T


def _score_batches(cfg: ExperimentConfig, data, plan: StreamPlan, device):
    a = cfg.method

    def batches(b: int) -> list:
        pool = plan.train_parts[b] if a.score_source == "newest" else plan.stage_train[b]
        k = max(1, math.ceil(a.score_fraction * pool.numel()))
        pick = pool[torch.randperm(pool.numel(), generator=generator(cfg.seed, "score", b))[:k]]
        loader = Loader(data.train.subset(pick), a.score_batch_size, shuffle=False,
                        mean=data.splits.mean, std=data.splits.std, device=device)
        return list(loader)

    return batches


def run_anytime(cfg: ExperimentConfig, run: Run) -> dict:
    """Train ``method.strategy`` over the stream; evaluate after every megabatch."""
    a = cfg.method
    data = prepare_data(cfg, run)
    plan = plan_stream(data.train.labels, a, cfg.seed)
    with atomic_path(run.artifact("stream_indices.safetensors")) as tmp:
        save_file({k: v.contiguous() for k, v in plan.tensors().items()}, str(tmp))
    device = resolve_device(cfg.train.device)
    T = plan.T
    densities = _schedule(a, T) if a.strategy != "dense" else [1.0] * T
    steps = _stage_steps(plan, cfg.train.epochs, cfg.data.batch_size)
    targets = Targets(exclude_first=a.exclude_first, exclude_last=a.exclude_last)
    ctx = StreamContext(cfg=cfg, acfg=a, plan=plan, densities=densities,
                        scheduled=_scheduled(a, densities, steps), total_steps=sum(steps),
                        targets=targets, score_batches=_score_batches(cfg, data, plan, device),
                        seed=derive_seed(cfg.seed, "prune") % (2**31),
                        input_shape=data.image_shape)
    model = build_model(cfg, data)
    setup = STRATEGIES[a.strategy](ctx, model)
    stream = StreamCallback(setup, ctx, data.image_shape)
    trainer = make_trainer(cfg, setup.model, run, callbacks=[*setup.callbacks, stream],
                           loss_fn=setup.loss_fn, eval_forward=setup.eval_forward)
    test = eval_loader(cfg, data.test, data.splits, device)
    per = setup.stages_per_megabatch
    for b in range(T):
        subset = data.train.subset(plan.stage_train[b])
        loader = train_loader(cfg, subset, data.splits, device, key=f"stage-{b}")
        val = None
        if plan.stage_val[b].numel():
            val = eval_loader(cfg, data.train.subset(plan.stage_val[b]), data.splits, device)
        evals = {"test": test}
        if a.eval_train:
            evals["train"] = eval_loader(cfg, subset, data.splits, device)
        for phase in range(per):
            last = phase == per - 1
            trainer.fit(loader, cfg.train.epochs, val_loader=val,
                        eval_loaders=evals if last else {}, stage=b * per + phase,
                        reset_optimizer=a.reset_optimizer or phase > 0, epoch_evals=())
    trainer.finish()
    stages = [h for h in trainer.history if h.get("evaluated")]
    summary = anytime_summary(stages, test_size=len(data.test))
    deployed = setup.deployed_model()
    save_weights(deployed, run.artifact("model.safetensors"))
    if a.save_masks and setup.masks is not None:
        setup.masks.save(run.artifact("masks.safetensors"))
    last = stages[-1]
    summary.update(
        strategy=a.strategy,
        megabatches=T,
        final_density_measured=last["density"],
        final_density_scheduled=last["density_scheduled"],
        final_density_all=last["density_all"],
        final_nonzeros=last["nonzeros"],
        final_flops_nonzero=last["flops_nonzero"],
        flops_dense=last["flops_dense"],
        train_time=last["wall_time_cumulative"],
        time_train=last["time_train"],
        time_eval=last["time_eval"],
        time_prune=last["time_prune"],
        test_size=len(data.test),
    )
    summary["density_per_stage"] = [s["density"] for s in stages]
    summary["density_scheduled_per_stage"] = [s["density_scheduled"] for s in stages]
    summary["test_acc_per_stage"] = [s["test_acc"] for s in stages]
    return summary
