"""Trackers against the real libraries, offline: what each one received, read back from disk.

One small anytime sweep (APP and dense, two megabatches) runs once with every installed
tracker; the tests read back TensorBoard's event files, the W&B offline run files and the
MLflow file store and compare them with the run directory.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import struct
import sys
from pathlib import Path

import pytest

from underbudget.config import flatten, load_config
from underbudget.errors import ConfigError, MissingDependencyError
from underbudget.experiment.launch import run_experiment
from underbudget.runs import Run

INSTALLED = [n for n in ("tensorboard", "wandb", "mlflow") if importlib.util.find_spec(n)]

SWEEP = {
    "name": "trk",
    "data": {"name": "synthetic", "image_size": 8, "channels": 1, "batch_size": 32,
             "options": {"num_classes": 4, "n_train": 192, "n_test": 64}},
    "model": {"name": "lenet5"},
    "optim": {"name": "sgd", "lr": 0.05, "schedule": "none"},
    "train": {"epochs": 1, "progress": False, "device": "cpu"},
    "method": {"name": "anytime", "strategy": "app", "megabatches": 2, "tau": 4.5},
    "sweep": {"method.strategy": ["app", "dense"]},
}


def quiet_wandb(mp: pytest.MonkeyPatch, folder: Path) -> None:
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        mp.setenv(var, str(folder / var.lower()))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    if not INSTALLED:
        pytest.skip("no tracker installed (pip install 'underbudget[track]')")
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        quiet_wandb(mp, root)
        cfg = load_config({**SWEEP, "track": {"backends": INSTALLED}})
        path = Path(run_experiment(cfg, root / "runs", quiet=True))
    app = Run(path / "strategy-app")
    return path, app


def events(run: Run, name: str) -> list[dict]:
    return run.events(name)


# ------------------------------------------------------------------------- TensorBoard


def tensorboard_run(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def tb_hparams(acc) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    raw = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(raw).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
            for k, v in start.hparams.items()}


def test_tensorboard_receives_config_every_event_summary_and_plots(sweep):
    pytest.importorskip("tensorboard")
    path, app = sweep
    logs = path / "track" / "tensorboard" / path.name
    acc = tensorboard_run(logs / "strategy-app")
    hparams = tb_hparams(acc)
    config = flatten(app.read_config())
    assert set(hparams) == set(config) and hparams["method.strategy"] == "app"
    assert hparams["optim.lr"] == pytest.approx(0.05)
    for event, key in (("epoch", "train_loss"), ("mask_update", "density"),
                       ("anytime_stage", "test_acc"), ("stage_end", "test_acc")):
        logged = events(app, event)
        points = acc.Scalars(f"{event}/{key}")
        assert logged and [p.step for p in points] == [e["step"] for e in logged], event
        assert [p.value for p in points] == pytest.approx([e[key] for e in logged])
    layer = next(iter(events(app, "mask_update")[0]["layer_densities"]))
    assert len(acc.Scalars(f"mask_update/layer_densities/{layer}")) == 2
    summary = app.read_summary()
    for key in ("anytime_error", "cer_rate", "final_test_acc", "final_density"):
        assert acc.Scalars(f"summary/{key}")[0].value == pytest.approx(summary[key])
    plots = sorted(p.stem for p in (path / "report").glob("*.png"))
    top = tensorboard_run(logs / path.name)
    assert plots and sorted(t[len("report/"):] for t in top.Tags()["images"]) == plots
    assert (logs / "strategy-dense").is_dir()


# ------------------------------------------------------------------------- W&B


def wandb_records(run_file: Path):
    """Records of a W&B transaction log (``run-*.wandb``: 32 KiB blocks of chunks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = run_file.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def _items(items) -> dict:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def wandb_runs(folder: Path) -> dict[str, dict]:
    out = {}
    for run_file in folder.glob("wandb/offline-run-*/run-*.wandb"):
        run = {"history": [], "summary": {}, "files": []}
        for rec in wandb_records(run_file):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                config = _items(rec.run.config.update)
                config.pop("_wandb", None)
                run.update(project=rec.run.project, group=rec.run.run_group, config=config)
                name = rec.run.display_name
            elif kind == "history":
                run["history"].append(_items(rec.history.item))
            elif kind == "summary":
                run["summary"].update(_items(rec.summary.update))
            elif kind == "files":
                run["files"] += [f.path for f in rec.files.files]
        out[name] = run
    return out


def test_wandb_offline_run_holds_config_every_event_summary_and_plots(sweep):
    pytest.importorskip("wandb")
    path, app = sweep
    runs = wandb_runs(path / "track")
    assert set(runs) == {path.name, "strategy-app", "strategy-dense"}
    assert {(r["project"], r["group"]) for r in runs.values()} == {("underbudget", path.name)}
    mine = runs["strategy-app"]
    assert mine["config"] == app.read_config()
    for event, key in (("epoch", "train_loss"), ("mask_update", "density"),
                       ("anytime_stage", "test_acc")):
        rows = [r for r in mine["history"] if f"{event}/{key}" in r]
        logged = events(app, event)
        assert [r["step"] for r in rows] == [e["step"] for e in logged], event
        assert [r[f"{event}/{key}"] for r in rows] == pytest.approx([e[key] for e in logged])
    summary = app.read_summary()
    assert mine["summary"]["summary/anytime_error"] == pytest.approx(summary["anytime_error"])
    assert mine["summary"]["summary/status"] == "ok"
    plots = sorted(p.stem for p in (path / "report").glob("*.png"))
    sent = sorted(Path(f).name.rsplit("_", 2)[0] for f in runs[path.name]["files"]
                  if f.startswith("media/images/report/"))
    assert plots and sent == plots


# ------------------------------------------------------------------------- MLflow


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_mlflow_file_store_holds_config_every_event_summary_and_plots(sweep):
    pytest.importorskip("mlflow")
    path, app = sweep
    client = mlflow_client((path / "track" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("underbudget")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {path.name, "strategy-app", "strategy-dense"}
    top, mine = runs[path.name], runs["strategy-app"]
    assert mine.data.tags["group"] == path.name
    assert mine.data.tags["mlflow.parentRunId"] == top.info.run_id
    assert mine.info.status == "FINISHED"
    config = flatten(app.read_config())
    assert set(mine.data.params) == set(config) and mine.data.params["method.strategy"] == "app"
    for event, key in (("epoch", "train_loss"), ("mask_update", "density"),
                       ("anytime_stage", "test_acc")):
        history = client.get_metric_history(mine.info.run_id, f"{event}/{key}")
        logged = events(app, event)
        assert sorted(m.step for m in history) == [e["step"] for e in logged], event
        assert sorted(m.value for m in history) == pytest.approx(sorted(e[key] for e in logged))
    summary = app.read_summary()
    assert mine.data.metrics["summary/cer_rate"] == pytest.approx(summary["cer_rate"])
    plots = sorted(p.name for p in (path / "report").glob("*.png"))
    sent = sorted(Path(a.path).name for a in client.list_artifacts(top.info.run_id, "report"))
    assert plots and sent == plots


# ------------------------------------------------------------------------- settings


TINY = {"name": "tiny-trk", "data": {"name": "synthetic", "image_size": 8, "channels": 1,
                                     "options": {"num_classes": 4, "n_train": 64, "n_test": 32}},
        "train": {"epochs": 1, "progress": False, "device": "cpu"}}


def test_project_group_name_and_folder_are_settable(tmp_path, monkeypatch):
    if not INSTALLED:
        pytest.skip("no tracker installed")
    quiet_wandb(monkeypatch, tmp_path)
    track = {"backends": INSTALLED, "project": "proj", "group": "grp", "name": "nm",
             "dir": str(tmp_path / "trackers")}
    path = run_experiment(load_config({**TINY, "track": track}), tmp_path / "runs", quiet=True)
    assert not (path / "track").exists()
    if "tensorboard" in INSTALLED:
        acc = tensorboard_run(tmp_path / "trackers" / "tensorboard" / "grp" / "nm")
        assert len(acc.Scalars("epoch/train_loss")) == 1
    if "wandb" in INSTALLED:
        (run,) = wandb_runs(tmp_path / "trackers").values()
        assert (run["project"], run["group"]) == ("proj", "grp")
        assert "nm" in wandb_runs(tmp_path / "trackers")
    if "mlflow" in INSTALLED:
        client = mlflow_client((tmp_path / "trackers" / "mlruns").as_uri())
        (run,) = client.search_runs([client.get_experiment_by_name("proj").experiment_id])
        assert run.info.run_name == "nm" and run.data.tags["group"] == "grp"


def test_children_of_a_run_are_tracked_in_its_group_with_calibration(tmp_path):
    pytest.importorskip("tensorboard")
    values = {
        "name": "ct", "data": {"name": "synthetic", "image_size": 8, "channels": 1,
                               "batch_size": 32,
                               "options": {"num_classes": 4, "n_train": 128, "n_test": 64}},
        "model": {"name": "convnet", "kwargs": {"widths": [4, 8]}},
        "train": {"epochs": 1, "device": "cpu", "progress": False},
        "method": {"name": "compress_transfer", "sparsities": [0.5], "quant": [],
                   "target": {"name": "digits", "limit": 100, "test_limit": 40,
                              "batch_size": 16},
                   "methods": ["lp"], "budgets": ["3shot"], "seeds": [0], "lp": {"epochs": 1}},
        "track": {"backends": ["tensorboard"]},
    }
    path = run_experiment(load_config(values), tmp_path, quiet=True)
    logs = path / "track" / "tensorboard" / path.name
    child = "transfer/omp-0.5/lp-3shot-seed0"
    acc = tensorboard_run(logs / child)
    summary = Run(path / child).read_summary()
    assert acc.Scalars("summary/ece")[0].value == pytest.approx(summary["ece"])
    hparams = tb_hparams(acc)
    assert hparams["child.variant"] == "omp-0.5" and hparams["method.name"] == "compress_transfer"
    assert (logs / "source").is_dir() and (logs / "variants" / "omp-0.5").is_dir()


def test_unknown_backend_names_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker .track.backends. 'wandbb' "
                                          r"\(did you mean 'wandb'\?\)"):
        load_config({**TINY, "track": {"backends": ["wandbb"]}})


@pytest.mark.parametrize("backend", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_tracker_names_its_extra_before_training(tmp_path, monkeypatch, backend):
    monkeypatch.setitem(sys.modules, backend, None)  # the import fails
    cfg = load_config({**TINY, "track": {"backends": [backend]}})
    with pytest.raises(MissingDependencyError, match=rf"pip install 'underbudget\[{backend}\]'"):
        run_experiment(cfg, tmp_path, quiet=True)
    assert not any(tmp_path.rglob("metrics.jsonl"))


def test_mlflow_refusing_its_store_is_one_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    cfg = load_config({**TINY, "track": {"backends": ["mlflow"],
                                         "mlflow_uri": "nosuchscheme://nowhere"}})
    with pytest.raises(ConfigError, match="MLflow cannot use the tracking store nosuchscheme"):
        run_experiment(cfg, tmp_path, quiet=True)


def test_a_failing_tracker_is_turned_off_and_the_run_finishes(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(SummaryWriter, "add_scalar", broken)
    cfg = load_config({**TINY, "track": {"backends": ["tensorboard"]}})
    path = run_experiment(cfg, tmp_path, quiet=True)
    assert Run(path).read_summary()["status"] == "ok"
    err = capsys.readouterr().err
    assert err.count("tracker tensorboard failed (OSError: disk full)") == 1


def test_run_listeners_see_start_events_and_summary_of_children(tmp_path):
    seen = []

    class Listener:
        def run_started(self, run, config):
            seen.append(("start", run.path.name, config))

        def run_logged(self, run, event, values):
            seen.append((event, run.path.name, values))

        def run_finished(self, run, summary):
            seen.append(("summary", run.path.name, summary))

    top = Run(tmp_path / "top", [Listener()])
    child = top.child("level-01")
    child.start({"seed": 0})
    child.log("mask_update", step=3, density=0.5)
    child.write_summary({"status": "ok"})
    assert seen == [("start", "level-01", {"seed": 0}),
                    ("mask_update", "level-01", {"step": 3, "density": 0.5}),
                    ("summary", "level-01", {"status": "ok"})]
    assert pickle.loads(pickle.dumps(child)).listeners == []  # stays in this process
