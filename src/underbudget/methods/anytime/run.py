"""The ``anytime`` method: one strategy trained over a stream of megabatches."""

from __future__ import annotations

import math
import re
import time

import torch
from safetensors.torch import save_file

from ...config import ExperimentConfig
from ...data import Loader
from ...errors import ConfigError
from ...metrics.anytime import anytime_summary
from ...models import save_weights
from ...runs import Run
from ...sparsity import Targets, cubic_density, gradual_steps, progressive_densities
from ...train import resolve_device
from ...utils.atomic import atomic_path
from ...utils.seeding import derive_seed, generator
from ..common import build_model, eval_loader, make_trainer, prepare_data, train_loader
from ..precision_setup import finish_model, first_inputs, prepare_model
from .config import AnytimeConfig
from .from_sections import anytime_experiment
from .plan import StreamPlan, plan_stream
from .strategies import STRATEGIES, StreamContext
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
        t0, n, dt = gradual_steps(sum(steps), 0.0, a.gmp_end, a.interval)
        ends = [sum(steps[: b + 1]) for b in range(T)]
        return [cubic_density(e - e % dt, densities[-1], 1.0, t0, n, dt) for e in ends]
    return [densities[-1]] * T


def score_indices(acfg: AnytimeConfig, plan: StreamPlan, b: int, seed: int) -> torch.Tensor:
    """Training-set indices that score the pruning before megabatch ``b`` (seeded).

    The pool is the newest megabatch's training part (``score_source=newest``) or everything
    stage b trains on (``replay``); ``score_count`` examples of it (at most all), else
    ``ceil(score_fraction × |pool|)``, drawn without replacement.
    """
    pool = plan.train_parts[b] if acfg.score_source == "newest" else plan.stage_train[b]
    k = acfg.score_count or math.ceil(acfg.score_fraction * pool.numel())
    k = max(1, min(int(k), pool.numel()))
    return pool[torch.randperm(pool.numel(), generator=generator(seed, "score", b))[:k]]


def prune_targets(acfg: AnytimeConfig, model: torch.nn.Module) -> Targets:
    """The prunable weights: every conv and linear weight (``prune_layers=all``) or the
    convolutions only (``conv``, as the public APP code), less the first/last if excluded."""
    if acfg.prune_layers == "all":
        return Targets(exclude_first=acfg.exclude_first, exclude_last=acfg.exclude_last)
    convs = [f"{n}.weight" if n else "weight" for n, m in model.named_modules()
             if isinstance(m, torch.nn.modules.conv._ConvNd)
             and isinstance(getattr(m, "weight", None), torch.nn.Parameter)]
    if not convs:
        raise ConfigError(
            f"method.prune_layers=conv, but {type(model).__name__} has no convolution; "
            "set method.prune_layers=all")
    return Targets(include=tuple("re:" + re.escape(n) for n in convs),
                   exclude_first=acfg.exclude_first, exclude_last=acfg.exclude_last)


def init_key(b: int) -> str:
    """Seed key of stage b's initialisation (stage 0: the model's own ``init``)."""
    return "init" if b == 0 else f"init/stage/{b}"


def _score_batches(cfg: ExperimentConfig, data, plan: StreamPlan, device):
    a = cfg.method

    def batches(b: int) -> list:
        pick = score_indices(a, plan, b, cfg.seed)
        loader = Loader(data.train.subset(pick), a.score_batch_size, shuffle=False,
                        mean=data.splits.mean, std=data.splits.std, device=device)
        return list(loader)

    return batches


def run_anytime(cfg: ExperimentConfig, run: Run) -> dict:
    """Train ``method.strategy`` over the stream; evaluate after every megabatch.

    The stream comes from the ``stream`` section when it is set (see :mod:`.from_sections`);
    with ``precision.mode: qat`` every stage trains the LSQ-quantized model, so each stage's
    evaluation is the quantized model's, and the converted model is the one saved.
    """
    started = time.perf_counter()
    cfg = anytime_experiment(cfg)
    a = cfg.method
    data = prepare_data(cfg, run)
    plan = plan_stream(data.train.labels, a, cfg.seed)
    with atomic_path(run.artifact("stream_indices.safetensors")) as tmp:
        save_file({k: v.contiguous() for k, v in plan.tensors().items()}, str(tmp))
    device = resolve_device(cfg.train.device)
    T = plan.T
    densities = _schedule(a, T) if a.strategy != "dense" else [1.0] * T
    steps = _stage_steps(plan, cfg.train.epochs, cfg.data.batch_size)
    model = build_model(cfg, data)
    targets = prune_targets(a, model)
    ctx = StreamContext(cfg=cfg, acfg=a, plan=plan, densities=densities,
                        scheduled=_scheduled(a, densities, steps), total_steps=sum(steps),
                        targets=targets, score_batches=_score_batches(cfg, data, plan, device),
                        seed=derive_seed(cfg.seed, "prune") % (2**31),
                        input_shape=data.image_shape)
    setup = STRATEGIES[a.strategy](ctx, model)
    sparse = setup.masks is not None
    first = data.train.subset(plan.stage_train[0])

    def example() -> torch.Tensor:
        return first_inputs(cfg, first, data.splits.mean, data.splits.std, "cpu")

    setup.model = prepare_model(cfg, setup.model, sparse, example)
    seeds = [derive_seed(cfg.seed, init_key(b)) if b == 0 or not a.warm_start else None
             for b in range(T)]

    def fresh_init(b: int) -> dict[str, torch.Tensor]:
        fresh = build_model(cfg, data, seed_key=init_key(b))
        return prepare_model(cfg, fresh, sparse, example).state_dict()

    stream = StreamCallback(setup, ctx, data.image_shape, started=started, init_seeds=seeds,
                            fresh_init=None if a.warm_start else fresh_init)
    trainer = make_trainer(cfg, setup.model, run, callbacks=[*setup.callbacks, stream],
                           loss_fn=setup.loss_fn, eval_forward=setup.eval_forward)
    test = stream.counted(eval_loader(cfg, data.test, data.splits, device))
    per = setup.stages_per_megabatch
    for b in range(T):
        subset = data.train.subset(plan.stage_train[b])
        loader = train_loader(cfg, subset, data.splits, device, key=f"stage-{b}")
        val = None
        if plan.stage_val[b].numel():
            val = stream.counted(
                eval_loader(cfg, data.train.subset(plan.stage_val[b]), data.splits, device))
        evals = {"test": test}
        if a.eval_train:
            evals["train"] = stream.counted(eval_loader(cfg, subset, data.splits, device))
        for phase in range(per):
            last = phase == per - 1
            trainer.fit(loader, cfg.train.epochs, val_loader=val,
                        eval_loaders=evals if last else {}, stage=b * per + phase,
                        reset_optimizer=a.reset_optimizer or phase > 0, epoch_evals=())
    trainer.finish()
    stages = [h for h in trainer.history if h.get("evaluated")]
    summary = anytime_summary(stages, test_size=len(data.test))
    deployed, precision = finish_model(
        cfg, setup.deployed_model(), setup.masks, data.image_shape,
        eval_loader(cfg, data.test, data.splits, device), device)
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
        time_train=last["time_train"],
        time_eval=last["time_eval"],
        time_prune=last["time_prune"],
        test_size=len(data.test),
        init_seeds=seeds,
    )
    summary.update(precision)
    summary["density_per_stage"] = [s["density"] for s in stages]
    summary["density_scheduled_per_stage"] = [s["density_scheduled"] for s in stages]
    summary["test_acc_per_stage"] = [s["test_acc"] for s in stages]
    summary["wall_time"] = stream.wall_time()  # the whole run, saving included, over resumes
    summary["time_other"] = summary["wall_time"] - (
        summary["time_train"] + summary["time_eval"] + summary["time_prune"])
    return summary
