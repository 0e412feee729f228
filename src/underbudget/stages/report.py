"""The report of a composed experiment: what each constraint did to the model and what it cost.

Written to ``<experiment>/report/``: ``report.md`` (two tables), ``models.csv``,
``transfer.csv`` and ``compose.json`` (the same rows as data).

- **Models**: every model the experiment deployed before transfer (the source; each lottery
  level; each quantized model) with its stage, source test accuracy and ECE (when the stage
  recorded no ECE, that of a quantize stage of it, else measured now), density, weight
  bits, bytes on disk in the compact exported form (and as a plain float file), inference
  FLOPs of one sample, and what producing it cost: training FLOPs and examples seen, added
  up along the chain (a lottery level includes every level before it, a quantized model its
  float model and the calibration passes).
- **Transfer**: one row per model x method x budget, mean ± sample std over the transfer
  seeds: target accuracy, ECE, the transfer's own training FLOPs and examples seen, beside
  what the upstream model brings (its source test accuracy, the source's data budget, its
  cumulative training FLOPs) and the transferred model's deployed bytes and inference FLOPs.

``compose.json`` also names every stage directory (``stages``, relative to the results
root) so that ``underbudget report <experiment>`` finds them; :func:`compose_table` is the
text table ``underbudget run`` prints.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import torch

from ..config import from_dict
from ..errors import UnderbudgetError
from ..methods.common import build_model, eval_loader, prepare_data
from ..methods.compress_transfer.source import test_calibration
from ..report.table import fmt, mean_std
from ..runs import Run
from ..runs.headline import headline
from ..utils.atomic import write_text
from .weights import QUANTIZE_STAGE, deployed, deployed_bytes

MODEL_COLUMNS = ("model", "stage", "source test acc", "source test ECE", "density", "bits",
                 "deployed bytes", "export bytes", "float file bytes", "inference FLOPs",
                 "dense FLOPs", "train FLOPs (cumulative)", "examples seen (cumulative)")
MODELS_NOTE = ("Measured on each deployed model: density of the prunable weights, bytes "
               "(deployed: the cost axis every run reports, prunable weights at the bit width "
               "in their smallest sparse encoding; on disk in the exported form: sparse "
               "layouts, integer codes when quantized; and a plain float file), FLOPs of one "
               "inference (nonzero weights; dense: every weight); training FLOPs and examples "
               "seen to produce it, added up along its chain of stages.")
TRANSFER_COLUMNS = ("model", "source budget", "source acc", "density", "bits",
                    "source train FLOPs", "method", "budget", "seeds", "target acc", "ECE",
                    "transfer train FLOPs", "transfer examples seen", "deployed bytes",
                    "inference FLOPs")
#: the columns ``underbudget run`` prints (model rows fill what a transfer row would)
TABLE_COLUMNS = ("model", "method", "budget", "acc", "ECE", "density", "bits",
                 "train FLOPs", "inference FLOPs", "deployed bytes", "examples seen")


def _summary(root: Path, path: str) -> dict:
    return Run(root / path).read_summary() or {}


def _stage_name(summary: dict, experiment: dict) -> str:
    if summary.get("stage") == QUANTIZE_STAGE:
        act = f"a{summary['act_bits']}" if summary.get("act_bits") else ""
        return f"PTQ w{summary['bits']}{act}"
    method = experiment.get("method", {}).get("name")
    if "level" in summary:
        return f"IMP level {summary['level']}"
    sparsity = experiment.get("sparsity", {})
    if method == "train" and sparsity.get("method", "none") != "none":
        return f"train, {sparsity['method']} to density {sparsity['density']:g}"
    return str(method)


_MEASURE_ERRORS = (UnderbudgetError, OSError, RuntimeError, KeyError, ValueError, TypeError)


def measured_ece(root: Path, path: str, data_cache: dict) -> float | None:
    """Test ECE of the deployed model at ``path``, measured now on its source test set (for
    a source that records none and has no quantize stage that measured it); None when its
    model cannot be rebuilt or its data loaded."""
    try:
        up = deployed(root / path)
        cfg = from_dict(up.config)
        key = json.dumps(up.config.get("data"), sort_keys=True, default=str)
        if key not in data_cache:
            data_cache[key] = prepare_data(cfg)
        data = data_cache[key]
        model_cfg = dataclasses.replace(cfg.model, weights=None)
        model = up.load_into(build_model(cfg, data, model_cfg=model_cfg)).eval()
        device = torch.device("cpu")
        test = eval_loader(cfg, data.test, data.splits, device)
        return float(test_calibration(model.to(device), test, device)["source_test_ece"])
    except _MEASURE_ERRORS:
        return None


def _cost_chain(root: Path, plan: dict) -> dict[str, tuple[float, float]]:
    """Per model label: (training FLOPs, examples seen) spent to produce it."""
    out: dict[str, tuple[float, float]] = {}
    levels = 0.0, 0.0
    for up in plan["upstreams"]:
        s = _summary(root, up["path"])
        own = float(s.get("train_flops") or 0.0), float(
            s.get("train_samples") or s.get("examples_seen") or 0.0)
        if s.get("stage") == QUANTIZE_STAGE:
            base = out.get(up["label"].rsplit("/", 1)[0] if "/" in up["label"] else "source",
                           (0.0, 0.0))
            out[up["label"]] = (base[0] + own[0], base[1] + own[1])
        elif "level" in s:  # lottery: a level costs every level up to it
            levels = (levels[0] + own[0], levels[1] + own[1])
            out[up["label"]] = levels
        else:
            out[up["label"]] = own
    return out


def model_rows(root: Path, plan: dict) -> list[dict]:
    """One row per deployed model (see the module docstring)."""
    chain = _cost_chain(root, plan)
    rows = []
    float_ece = {}  # a quantize stage measured its float model's test ECE too
    for up in plan["upstreams"]:
        s = _summary(root, up["path"])
        if s.get("stage") == QUANTIZE_STAGE and s.get("test_ece_float") is not None:
            float_ece.setdefault(s.get("upstream"), s["test_ece_float"])
    measured = {}  # a transfer measured its upstream's deployed bytes by the same rule
    for t in plan["transfers"]:
        value = _summary(root, t["path"]).get("upstream_bytes_deployed")
        if value is not None:
            measured.setdefault(t["label"], value)
    for up in plan["upstreams"]:
        s = _summary(root, up["path"])
        model = deployed(root / up["path"])
        sizes = deployed_bytes(model.state, model.bits, model.targets)
        rows.append({
            "model": up["label"], "path": up["path"],
            "stage": _stage_name(s, plan["experiment"]),
            "source test acc": headline(s)["accuracy"],
            "source test ECE": headline(s)["ECE"] if headline(s)["ECE"] is not None
            else float_ece.get(up["path"]),
            "density": model.density, "bits": model.bits or 32,
            "deployed bytes": next((v for v in ((s.get("costs") or {}).get("deployed_bytes"),
                                                 s.get("bytes_deployed"),
                                                 measured.get(up["label"])) if v is not None),
                                   None),
            "export bytes": sizes["bytes_deployed"], "float file bytes": sizes["bytes_float"],
            "inference FLOPs": s.get("flops_nonzero"), "dense FLOPs": s.get("flops_dense"),
            "train FLOPs (cumulative)": chain[up["label"]][0],
            "examples seen (cumulative)": chain[up["label"]][1],
        })
    cache: dict = {}
    for row in rows:
        if row["source test ECE"] is None:
            row["source test ECE"] = measured_ece(root, row["path"], cache)
    return rows


def transfer_rows(root: Path, plan: dict, models: list[dict]) -> list[dict]:
    """One row per model x method x budget, over the transfer seeds."""
    by_model = {m["model"]: m for m in models}
    groups: dict[tuple, list[dict]] = {}
    for t in plan["transfers"]:
        s = _summary(root, t["path"])
        if s:
            groups.setdefault((t["label"], t["method"], t["budget"]), []).append(s)
    rows = []
    for (label, method, budget), runs in groups.items():
        def stat(key: str, runs=runs) -> tuple[float, float]:
            return mean_std([r[key] for r in runs if isinstance(r.get(key), int | float)])

        m = by_model[label]
        bytes_ = [(r.get("costs") or {}).get("deployed_bytes") for r in runs]
        rows.append({"model": label, "source budget": source_budget(plan["experiment"]),
                     "source acc": m["source test acc"], "density": m["density"],
                     "bits": m["bits"], "source train FLOPs": m["train FLOPs (cumulative)"],
                     "method": method, "budget": budget,
                     "seeds": len(runs), "target acc": stat("acc"), "ECE": stat("ece"),
                     "transfer train FLOPs": stat("train_flops"),
                     "transfer examples seen": stat("examples_seen"),
                     "deployed bytes": bytes_[0] if None not in bytes_ else None,
                     "inference FLOPs": runs[0].get("flops_inference")})
    return rows


def source_budget(experiment: dict) -> str:
    """The source's data budget in a transfer budget's words: ``<k>shot``, a fraction, all."""
    d = experiment.get("data", {})
    if d.get("kshot"):
        return f"{d['kshot']}shot"
    return f"fraction {d['fraction']:g}" if d.get("fraction") else "all"


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        return fmt(value)
    if isinstance(value, float) and value.is_integer() and 2 <= abs(value) < 1e6:
        value = int(value)
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,d}"
    if isinstance(value, float):
        if abs(value) >= 1e4:
            return f"{value:.3g}"
        return f"{value:,.1f}" if abs(value) >= 2 else f"{value:.4f}"  # bytes: 202.5
    return str(value)


def _markdown(rows: list[dict], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for r in rows:
        writer.writerow([" ± ".join(map(str, v)) if isinstance(v, tuple) else v
                         for v in (r.get(c) for c in columns)])
    return out.getvalue()


def constraints_line(experiment: dict) -> list[str]:
    """What the experiment constrains, one bullet per section in force."""
    d, s = experiment.get("data", {}), experiment.get("sparsity", {})
    p, t = experiment.get("precision", {}), experiment.get("transfer", {})
    m = experiment.get("method", {})
    budget = (f"{d['kshot']} images per class" if d.get("kshot") else
              f"fraction {d['fraction']:g}" if d.get("fraction") else "all")
    pool = f" of a {d['limit']}-image pool" if d.get("limit") else ""
    lines = [f"- data budget: {budget}{pool} of {d.get('name')}",
             f"- method: {m.get('name')}"
             + (f", sparsity {s['method']} to density {s['density']:g}"
                if s.get("method", "none") != "none" else "")
             + (f", {m['levels']} IMP levels at rate {m['rate']:g}, rewind {m['rewind']}"
                if m.get("name") == "lottery" else "")]
    if p.get("mode", "none") != "none":
        act = f", activations {p['act_bits']} bits" if p.get("act_bits") else ""
        lines.append(f"- precision: {p['mode']}, weights {p['weight_bits']} bits{act}")
    if t.get("target"):
        lines.append(f"- transfer to {t['target'].get('name')}: {', '.join(t['methods'])} at "
                     f"{', '.join(map(str, t['budgets']))}, seeds {t['seeds']}")
    return lines


def write_compose_report(plan: dict, root: str | Path) -> dict:
    """Write the experiment's report from its finished stages; returns what it wrote."""
    root = Path(root)
    out = root / plan["path"] / "report"
    models = model_rows(root, plan)
    transfers = transfer_rows(root, plan, models)
    text = ["# Report", "", f"Experiment `{plan['experiment'].get('name')}`; source stage "
            f"`{plan['source']}`.", "", *constraints_line(plan["experiment"]), "",
            "## Models", "", MODELS_NOTE, "", _markdown(models, MODEL_COLUMNS)]
    if transfers:
        text += ["## Transfer", "", "Mean ± sample std over transfer seeds; ECE before "
                 "temperature scaling; training FLOPs of the transfer stage alone.", "",
                 _markdown(transfers, TRANSFER_COLUMNS)]
    write_text(out / "report.md", "\n".join(text))
    write_text(out / "models.csv", _csv(models, MODEL_COLUMNS))
    write_text(out / "transfer.csv", _csv(transfers, TRANSFER_COLUMNS))
    stages = [u["path"] for u in plan["upstreams"]] + [t["path"] for t in plan["transfers"]]
    write_text(out / "compose.json", json.dumps(
        {"models": models, "transfers": transfers, "stages": stages,
         "root": "../" * (len(Path(plan["path"]).parts) + 1)},
        indent=2, default=str) + "\n")
    return {"status": "ok", "models": len(models), "transfer_rows": len(transfers),
            "report": str(out / "report.md")}


def compose_stages(experiment: str | Path) -> list[Path] | None:
    """The stage directories of the composed experiment at ``experiment`` (None when it is
    not one: no ``report/compose.json``)."""
    experiment = Path(experiment)
    try:
        data = json.loads((experiment / "report" / "compose.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    root = (experiment / "report" / data.get("root", "../../")).resolve()
    return [root / p for p in data.get("stages", [])]


def table_rows(data: dict) -> list[dict]:
    """``compose.json`` as the rows of :data:`TABLE_COLUMNS`: one per model (its source test
    accuracy and ECE, cumulative training), then one per model x method x budget."""
    rows = [{"model": m["model"], "method": m["stage"], "budget": "-",
             "acc": m["source test acc"], "ECE": m["source test ECE"],
             "density": m["density"], "bits": m["bits"],
             "train FLOPs": m["train FLOPs (cumulative)"],
             "inference FLOPs": m["inference FLOPs"], "deployed bytes": m["deployed bytes"],
             "examples seen": m["examples seen (cumulative)"]} for m in data["models"]]
    rows += [{"model": t["model"], "method": t["method"], "budget": t["budget"],
              "acc": t["target acc"], "ECE": t["ECE"], "density": t["density"],
              "bits": t["bits"], "train FLOPs": t["transfer train FLOPs"],
              "inference FLOPs": t["inference FLOPs"], "deployed bytes": t["deployed bytes"],
              "examples seen": t["transfer examples seen"]} for t in data["transfers"]]
    return rows


def _text(value) -> str:
    if isinstance(value, list | tuple) and len(value) == 2 and value[1]:
        return f"{_text(value[0])}±{_text(value[1])}"
    if isinstance(value, list | tuple):
        return _text(value[0]) if value else "–"
    return _cell(value)


def compose_table(experiment: str | Path) -> str | None:
    """The aligned text table of a composed experiment's report (None when ``experiment``
    has no ``report/compose.json``): models, then transfers (mean±std over seeds); a
    transfer row's train FLOPs are the transfer's own."""
    try:
        data = json.loads((Path(experiment) / "report" / "compose.json").read_text(
            encoding="utf-8"))
    except (OSError, ValueError):
        return None
    table = [list(TABLE_COLUMNS)]
    table += [[_text(r.get(c)) for c in TABLE_COLUMNS] for r in table_rows(data)]
    widths = [max(len(row[i]) for row in table) for i in range(len(TABLE_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in table)
