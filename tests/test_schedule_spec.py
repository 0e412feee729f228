"""One ``sparsity`` spec for every schedule: progressive (APP), iterative (IMP) and dual
dynamic (D2-Sparse) are values of ``sparsity.method``, on the time axis the run has.

The spellings are checked three ways: the engine settings they resolve to equal the ones the
research lines' own method sections give (for every shipped preset rewritten in the one
spec), the pinned numbers of ``tests/pins.py`` are reproduced through the new spelling, and
every impossible combination is one ConfigError that names the fix.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest

from pins import CASES, run_case
from test_regression_pins import PINS
from underbudget.config import load_config, to_dict
from underbudget.errors import ConfigError
from underbudget.experiment.sweep import expand_sweep
from underbudget.methods.anytime.from_sections import anytime_experiment

TAU = 0.8 ** 4.5
APP_OLD = {"name": "anytime", "strategy": "app", "tau": 4.5, "criterion": "snip",
           "scope": "global", "score_fraction": 0.2}
#: the shipped presets rewritten in the one spec, and their method sections as they were
OLD_METHODS = {
    "app-qat4": {"method": APP_OLD},
    "d2sparse-stream": {
        "method": {**APP_OLD, "interval": 50, "t_end": 0.75,
                   "d2sparse": {"fast_alpha": 0.4, "slow_alpha": 0.1, "lambda_fast": 0.1,
                                "lambda_slow": 0.3}},
        "sweep": {"method.strategy": ["app", "d2sparse"]}},
    "imp-budget-transfer": {"method": {"name": "lottery", "levels": 3, "rate": 0.5,
                                       "scope": "global", "criterion": "magnitude",
                                       "rewind": "step:47"}},
}


def engines(cfg) -> list:
    """What runs for each child: the anytime settings over a stream, else the method's."""
    kids = [c for _, c in expand_sweep(cfg)] if cfg.sweep else [cfg]
    return [(anytime_experiment(c) if c.stream.enabled else c).method for c in kids]


def comparable(m):
    """A resolved method config without what the spelling may rightly change: the clean
    training accuracy switch, and settings a strategy does not read (D2's for APP)."""
    out = dataclasses.replace(m, eval_train=None)
    if getattr(m, "strategy", None) == "app":
        out = dataclasses.replace(out, d2sparse={})
    if getattr(m, "strategy", None) == "d2sparse":  # tau or its density: the same target
        out = dataclasses.replace(out, tau=None, d_final=round(m.final_density(), 15))
    return out


@pytest.mark.parametrize("preset", sorted(OLD_METHODS))
def test_rewritten_presets_run_what_the_lines_own_sections_ran(preset):
    new = load_config(preset)
    old = to_dict(new)
    old["sparsity"] = {}
    old.update(copy.deepcopy(OLD_METHODS[preset]))
    old.setdefault("sweep", {})
    a, b = engines(new), engines(load_config(old))
    assert [type(m).__name__ for m in a] == [type(m).__name__ for m in b]
    assert [comparable(m) for m in a] == [comparable(m) for m in b]


def _one_spec(case: str, schedule: str = "progressive") -> dict:
    """A pin case of a line's own method rewritten as ``train`` + one ``sparsity`` spec."""
    cfg = copy.deepcopy(CASES[case])
    m = cfg.pop("method")
    cfg.pop("sweep", None)
    cfg["method"] = {"name": "train", "eval_train": True}
    if case == "lottery":
        cfg["sparsity"] = {"method": "iterative", "density": 0.25, "iterative": {"rate": 0.5}}
    elif schedule == "progressive":
        cfg["stream"] = {"megabatches": m["megabatches"]}
        cfg["sparsity"] = {"method": "progressive", "density": TAU, "criterion": m["criterion"],
                           "progressive": {"tau": m["tau"],
                                           "score_fraction": m["score_fraction"]}}
    else:  # gradual magnitude pruning over the stream's steps
        cfg["stream"] = {"megabatches": m["megabatches"]}
        cfg["sparsity"] = {"method": "gradual", "density": TAU}
    return cfg


def _run(name: str, cfg: dict, tmp_path) -> dict[str, float]:
    CASES[name] = cfg
    try:
        return run_case(name, tmp_path)
    finally:
        del CASES[name]


def test_iterative_schedule_reproduces_the_lottery_pins(tmp_path):
    got = _run("lottery-one-spec", _one_spec("lottery"), tmp_path)
    pins = PINS["lottery"]
    assert {k: got[k] for k in pins} == pytest.approx(pins, rel=1e-6)


@pytest.mark.parametrize("schedule, strategy", [("progressive", "app"), ("gradual", "gmp")])
def test_schedules_over_a_stream_reproduce_the_anytime_pins(schedule, strategy, tmp_path):
    got = _run(f"anytime-{schedule}", _one_spec("anytime", schedule), tmp_path)
    prefix = f"pin-anytime/strategy-{strategy}:"
    pins = {k.replace(prefix, "pin-anytime:"): v for k, v in PINS["anytime"].items()
            if k.startswith(prefix)}
    assert len(pins) == 4
    assert {k: got[k] for k in pins} == pytest.approx(pins, rel=1e-6)


BASE = {"data": {"name": "digits"}, "model": {"name": "mlp"}}


def test_a_sweep_over_schedules_lowers_each_child_to_what_runs_it():
    cfg = load_config({**BASE, "sparsity": {"method": "gradual", "density": 0.25,
                                            "iterative": {"rate": 0.5},
                                            "dual_dynamic": {"lambda_fast": 0.2}},
                       "sweep": {"sparsity.method": ["gradual", "iterative", "dual_dynamic"]}})
    assert cfg.method.name == "train"  # a sweep's parent is left as written
    kids = dict(expand_sweep(cfg))
    gradual, imp, d2 = (kids[f"method-{m}"].method for m in ("gradual", "iterative",
                                                             "dual_dynamic"))
    assert gradual.name == "train"
    assert (imp.name, imp.levels, imp.rate, imp.rewind) == ("lottery", 2, 0.5, "init")
    assert (d2.name, d2.density, d2.lambda_fast) == ("d2sparse", 0.25, 0.2)
    # the resolved config of a lowered child reads back as itself (a stage's config)
    again = load_config(to_dict(kids["method-iterative"]))
    assert again.method == imp


@pytest.mark.parametrize("section, message", [
    ({"sparsity": {"method": "progressive", "density": 0.3}}, "set stream.megabatches"),
    ({"sparsity": {"method": "iterative", "density": 0.3, "iterative": {"rate": 0.5}}},
     "2 levels keep 0.25"),
    ({"sparsity": {"method": "iterative", "density": 0.25, "iterative": {"rat": 0.5}}},
     "did you mean 'rate'"),
    ({"sparsity": {"method": "iterative", "density": 0.64}, "precision": {"mode": "qat"}},
     "over a stream (stream.megabatches), where every schedule applies it"),
    ({"sparsity": {"method": "dual_dynamic", "density": 0.1,
                   "dual_dynamic": {"fast_alpa": 0.4}}}, "did you mean 'fast_alpha'"),
    ({"sparsity": {"method": "progressive", "density": 0.5, "progressive": {"tau": 4.5}},
      "stream": {"megabatches": 4}}, "make them agree"),
    ({"sparsity": {"method": "progressive", "density": 0.5, "progressive": {"shap": "cubic"}},
      "stream": {"megabatches": 4}}, "did you mean 'shape'"),
    ({"sparsity": {"method": "iterative", "density": 0.5, "iterative": {"rate": 0.5}},
      "stream": {"megabatches": 4}}, "leave sparsity.iterative"),
    ({"sparsity": {"method": "cyclic", "density": 0.5}}, "progressive"),
])
def test_impossible_schedules_are_one_clear_error(section, message):
    with pytest.raises(ConfigError) as err:
        load_config({**BASE, **section})
    assert message in str(err.value)


def test_iterative_and_dual_dynamic_over_a_stream_run_as_stream_strategies():
    stream = {"megabatches": 4}
    imp = load_config({**BASE, "stream": stream, "sparsity": {"method": "iterative",
                                                              "density": 0.4}})
    d2 = load_config({**BASE, "stream": stream, "sparsity": {
        "method": "dual_dynamic", "density": 0.2, "interval": 7,
        "dual_dynamic": {"lambda_slow": 0.5}}})
    a, b = anytime_experiment(imp).method, anytime_experiment(d2).method
    assert (a.strategy, a.final_density(), a.megabatches) == ("imp", 0.4, 4)
    assert (b.strategy, b.final_density(), b.interval, b.d2sparse) == (
        "d2sparse", 0.2, 7, {"lambda_slow": 0.5})
