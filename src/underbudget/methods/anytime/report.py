"""The anytime comparison report: tables (overall, per megabatch) and plots over settings ×
seeds."""

from __future__ import annotations

from pathlib import Path

from ...report import group_by_setting, line_plot, markdown, mean_std, summarize, to_csv
from ...utils.atomic import write_text

TABLE_KEYS = ["final_test_acc", "cer_count", "cer_rate", "anytime_error",
              "final_gap_train_test", "mean_gap_train_test", "final_gap_train_val",
              "final_gap_paper", "mean_gap_paper",
              "final_density_measured", "final_density_scheduled", "final_flops_nonzero",
              "total_train_flops", "total_flops_spent", "train_samples", "wall_time",
              "weight_bits", "act_bits", "density_deployed", "bytes_deployed",
              "deployed_test_acc"]


def _per_stage(records, key: str) -> tuple[list, list, list]:
    """Mean and std over seeds of ``key`` at each stage (the stages all runs have)."""
    runs = []
    for rec in records:
        values = [e.get(key) for e in rec.events("anytime_stage")]
        if values and all(v is not None for v in values):
            runs.append(values)
    if not runs:
        return [], [], []
    n = min(len(r) for r in runs)
    stats = [mean_std([r[i] for r in runs]) for i in range(n)]
    return list(range(1, n + 1)), [m for m, _ in stats], [s for _, s in stats]


def _stage_table(groups, key: str) -> str:
    """A markdown table of ``key`` after each megabatch (mean ± std over seeds) per setting."""
    rows, width = [], 0
    for label, recs in groups:
        xs, means, stds = _per_stage(recs, key)
        row = {"setting": label, "seeds": len({r.seed for r in recs})}
        for x, m, sd in zip(xs, means, stds):
            row[f"stage {x}"] = (m, sd)
        width = max(width, len(xs))
        rows.append(row)
    keys = [f"stage {x}" for x in range(1, width + 1)]
    for row in rows:
        for k in keys:
            row.setdefault(k, (float("nan"), float("nan")))
    return markdown(rows, keys) if keys else ""


def anytime_report(records, out_dir: Path, options: dict) -> dict:
    """Table (mean ± std over seeds) and plots: accuracy, density, gap, accuracy vs FLOPs."""
    out = Path(out_dir)
    groups = group_by_setting(records)
    keys = [k for k in TABLE_KEYS if any(k in r.summary for r in records)]
    rows = summarize(groups, keys)
    write_text(out / "anytime_summary.csv", to_csv(rows, keys))
    files = [str(out / "anytime_summary.csv")]
    acc, dens, gap, flops = {}, {}, {}, {}
    styles = {}
    for label, recs in groups:
        xs, m, s = _per_stage(recs, "test_acc")
        if xs:
            acc[label] = (xs, m, s)
        xs, m, s = _per_stage(recs, "density")
        if xs:
            dens[f"{label} (measured)"] = (xs, m, s)
            xs2, m2, _ = _per_stage(recs, "density_scheduled")
            dens[f"{label} (scheduled)"] = (xs2, m2, None)
            styles[f"{label} (scheduled)"] = {"linestyle": "--", "marker": "x"}
        xs, m, s = _per_stage(recs, "gap_train_test")
        if xs:
            gap[label] = (xs, m, s)
        _, f, _ = _per_stage(recs, "train_flops_cumulative")
        _, a, s = _per_stage(recs, "test_acc")
        if f:
            flops[label] = (f, a, s)
    if acc:
        files.append(str(line_plot(acc, out / "anytime_test_acc_vs_stage.png",
                                   xlabel="megabatch (stage)", ylabel="test accuracy",
                                   title="Test accuracy after each megabatch")))
        err = {k: (xs, [1 - m for m in ms], sd) for k, (xs, ms, sd) in acc.items()}
        files.append(str(line_plot(err, out / "anytime_test_error_vs_stage.png",
                                   xlabel="megabatch (stage)", ylabel="test error rate",
                                   title="Test error per megabatch (cer_rate: their sum)",
                                   fill_area=True)))
    if dens:
        files.append(str(line_plot(dens, out / "anytime_density_vs_stage.png",
                                   xlabel="megabatch (stage)", ylabel="density (kept weights)",
                                   title="Density: scheduled vs measured", styles=styles)))
    if gap:
        files.append(str(line_plot(gap, out / "anytime_gap_vs_stage.png",
                                   xlabel="megabatch (stage)", ylabel="train − test accuracy",
                                   title="Generalization gap")))
    if flops:
        files.append(str(line_plot(flops, out / "anytime_acc_vs_train_flops.png",
                                   xlabel="cumulative training FLOPs", ylabel="test accuracy",
                                   title="Accuracy vs training cost", logx=True)))
    text = ["## Anytime comparison", "",
            "CER = Σ_b e_b (test errors after each megabatch); cer_rate = CER / |test|; "
            "anytime_error = cer_rate / T. Gaps are train − test (and train − validation) "
            "accuracy; gap_paper is the APP code's running train − validation accuracy of "
            "each stage's last epoch; densities are measured from the masks over prunable "
            "weights; density_deployed is counted on the saved (for QAT: quantized) weights and "
            "bytes_deployed stores them at weight_bits (float32 otherwise). Costs count "
            "everything spent (discarded epochs, scoring passes and evaluation included); "
            "wall_time is the run's wall clock.", "",
            markdown(rows, keys), "", "### Test accuracy after each megabatch", "",
            _stage_table(groups, "test_acc"), "",
            "### Measured density after each megabatch", "",
            _stage_table(groups, "density")]
    return {"markdown": "\n".join(text), "files": files}
