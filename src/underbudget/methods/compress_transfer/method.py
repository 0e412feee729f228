"""``compress_transfer``: the cost of compression for transfer, in accuracy and calibration.

A parent run holds child runs, each skipped when finished and resumed when interrupted::

    source/                               the source model (trained once, or loaded)
    imp/level-KK/                         IMP levels (only when 'imp' is asked for)
    variants/<variant>/                   each compression level, measured on the source task
    transfer/<variant>/<method>-<budget>-seed<s>/   each transfer run
"""

from __future__ import annotations

import sys
import time

from ...config import ExperimentConfig
from ...runs import Run
from ..registry import register_method
from .config import CompressTransferConfig, parse_budget, parse_method
from .context import make_context
from .prompting import check_frame
from .report import report
from .source import fresh_model, source_stage
from .transfer import transfer_run
from .variants import build_variant, load_variant, variant_specs


def transfer_run_name(variant: str, method: str, budget: str, seed: int) -> str:
    """Child path of one transfer run inside the parent run."""
    return f"transfer/{variant}/{method}-{budget}-seed{seed}"


@register_method(
    "compress_transfer",
    CompressTransferConfig,
    "compress a source model (pruning, quantization), transfer it (LP, FT, VP with "
    "label mapping) at low data; accuracy and calibration",
    report=report,
)
def run_compress_transfer(cfg: ExperimentConfig, run: Run) -> dict:
    """Source → variants → transfer grid; returns headline numbers (the report has the rest)."""
    m: CompressTransferConfig = cfg.method

    def say(text: str) -> None:
        if cfg.train.progress:
            print(text, file=sys.stderr, flush=True)

    ctx = make_context(cfg, run)
    if any(spec.kind == "vp" for spec in (parse_method(x) for x in m.methods)):
        c, h, _ = ctx.input_shape
        check_frame(fresh_model(ctx), m.vp.frame or h, c, ctx.source.num_classes, h)
    t0 = time.perf_counter()
    source, source_summary = source_stage(ctx)
    say(f"source: test acc {source_summary['source_test_acc']:.4f}")
    t1 = time.perf_counter()
    specs = variant_specs(m)
    summaries = {}
    for spec in specs:
        summaries[spec.name] = s = build_variant(ctx, spec, source)
        say(
            f"variant {spec.name}: density {s['density']:.4f}, bits {s['bits']}, "
            f"source test acc {s['source_test_acc']:.4f}"
        )
    t2 = time.perf_counter()
    methods = [parse_method(x) for x in m.methods]
    budgets = [parse_budget(b) for b in m.budgets]
    total = len(specs) * len(methods) * len(budgets) * len(m.seeds)
    done = 0
    for spec in specs:
        variant = load_variant(ctx, spec, summaries[spec.name])
        for method in methods:
            for budget in budgets:
                for seed in m.seeds:
                    child = run.child(
                        transfer_run_name(spec.name, method.label, budget.label, seed)
                    )
                    r = transfer_run(ctx, variant, method, budget, seed, child)
                    done += 1
                    say(
                        f"[{done}/{total}] {spec.name} {method.label} {budget.label} "
                        f"seed {seed}: acc {r['acc']:.4f} ece {r['ece']:.4f} "
                        f"({r['time']:.1f}s)"
                    )
    t3 = time.perf_counter()
    return {
        "source_test_acc": source_summary["source_test_acc"],
        "source_test_ece": source_summary["source_test_ece"],
        "variants": len(specs),
        "transfer_runs": total,
        "source_time": t1 - t0,
        "compression_time": t2 - t1,
        "transfer_time": t3 - t2,
    }
