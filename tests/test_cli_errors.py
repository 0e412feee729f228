"""Every error a user can cause: one line naming the fix, exit status 2, nothing written."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from underbudget.cli import main


def refused(capsys, argv: list[str], *expected: str) -> str:
    """Run the command line; check it refused with one clean line holding ``expected``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    return err


def nothing_in(folder) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.fixture
def out(tmp_path):
    return tmp_path / "runs"


def _npz(path, n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 255, (n_train, 8, 8), dtype=np.uint8),
             y_train=np.arange(n_train) % 4, x_test=rng.integers(0, 255, (n_test, 8, 8),
                                                                 dtype=np.uint8),
             y_test=np.arange(n_test) % 4)
    return path


# --------------------------------------------------------------------------- where runs go


def test_a_directory_as_the_config(tmp_path, capsys, out):
    (tmp_path / "cfg").mkdir()
    refused(capsys, ["run", str(tmp_path / "cfg"), "--out", str(out)], "is a directory")
    assert not out.exists()


def test_out_naming_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    refused(capsys, ["run", "tiny", "--out", str(tmp_path / "file")], "is a file", "--out")
    refused(capsys, ["run", "tiny", "--out", str(tmp_path / "file" / "sub")], "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_out_naming_an_unwritable_folder(tmp_path, capsys):
    if os.geteuid() != 0:
        target = tmp_path / "locked"
        target.mkdir(mode=0o500)
    elif sys.platform.startswith("linux") and os.path.isdir("/sys"):
        target = "/sys/underbudget-runs"  # read-only even for root
    else:  # pragma: no cover
        pytest.skip("no folder this user cannot write")
    refused(capsys, ["run", "tiny", "--out", str(target / "runs") if not isinstance(
        target, str) else target], "cannot write", "--out")


def test_empty_out_and_overlong_name(capsys, out):
    refused(capsys, ["run", "tiny", "--out", ""], "--out is empty")
    refused(capsys, ["run", "tiny", "--out", str(out), "name=" + "x" * 300],
            "name is 300 characters", "keep it to")
    assert not out.exists()


# --------------------------------------------------------------------------- devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu(capsys, out):
    refused(capsys, ["run", "tiny", "--out", str(out), "train.device=cuda"],
            "train.device=cuda", "use train.device=auto or cpu")
    refused(capsys, ["run", "tiny", "--out", str(out), "--device", "cuda:1"], "cuda:1")
    refused(capsys, ["run", "tiny", "--dry-run", "train.device=cuda"], "train.device=cuda")
    assert not out.exists()


def test_a_device_torch_does_not_know(capsys, out):
    refused(capsys, ["run", "tiny", "--out", str(out), "train.device=nonsense"],
            "'nonsense' is not a device torch knows")
    refused(capsys, ["run", "tiny", "--dry-run", "--device", "meta"], "no meta device")
    assert not out.exists()


# --------------------------------------------------------------------------- report


def test_report_on_what_is_not_a_run(tmp_path, capsys):
    refused(capsys, ["report", str(tmp_path / "missing")], "no run or folder at")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    refused(capsys, ["report", str(tmp_path / "empty")], "no finished run")
    assert nothing_in(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    refused(capsys, ["report", str(tmp_path / "file")], "is a file")


def test_report_out_naming_a_file(tmp_path, capsys):
    assert main(["run", "tiny", "--out", str(tmp_path / "runs"), "--quiet",
                 "train.epochs=1"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    refused(capsys, ["report", str(run), "--out", str(tmp_path / "file")], "is a file")
    assert (tmp_path / "file").read_text() == "x"


# --------------------------------------------------------------------------- names and files


@pytest.mark.parametrize("argv, expected", [
    (["model.name=resnet1000"], "unknown model 'resnet1000'"),
    (["data.name=cifar11"], "unknown dataset (data.name) 'cifar11' (did you mean 'cifar10'?)"),
    (["model.kwargs={hiddn: [3]}"], "has no option 'hiddn'"),
    (["model.weights=/no/such/file.safetensors"], "model.weights: no file"),
])
def test_dry_run_checks_names(capsys, argv, expected):
    refused(capsys, ["run", "tiny", "--dry-run", *argv], expected)


def test_dry_run_checks_files(tmp_path, capsys):
    good = _npz(tmp_path / "good.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(good.read_bytes()[:300])
    refused(capsys, ["run", "tiny", "--dry-run", f"data.name=npz:{corrupt}", "data.options={}"],
            "corrupt.npz is not an npz file")
    assert main(["run", "tiny", "--dry-run", f"data.name=npz:{good}", "data.options={}"]) == 0
    assert "config ok" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["model.name=nope"], "unknown model 'nope'"),
    (["data.name=nope"], "unknown dataset"),
    (["data.name=npz:{tmp}/missing.npz", "data.options={}"], "missing.npz not found"),
    (["data.name=npz:{tmp}/random.npz", "data.options={}"],
     "random.npz is not an npz file (numpy.savez writes a zip archive"),
    (["data.name=imagefolder:{tmp}/nowhere", "data.options={}"],
     "image folder {tmp}/nowhere does not exist"),
    (["data.name=imagefolder:{tmp}/random.npz", "data.options={}"], "is a file"),
    (["data.name=npz:{tmp}/random.npz"],
     "data.options n_test, n_train, num_classes are not options of dataset 'npz'"),
    (["data.name=imagefolder:{tmp}"], "add data.options={}"),
])
def test_bad_names_and_files_create_nothing(tmp_path, capsys, out, argv, expected):
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(0).bytes(500))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    refused(capsys, ["run", "tiny", "--out", str(out), *argv],
            expected.replace("{tmp}", str(tmp_path)))
    assert not out.exists()


def test_imagefolder_without_a_test_split(tmp_path, capsys, out):
    (tmp_path / "imgs" / "train" / "a").mkdir(parents=True)
    refused(capsys, ["run", "tiny", "--out", str(out), f"data.name=imagefolder:{tmp_path}/imgs",
                     "data.options={}"], "has no test/ folder")
    assert not out.exists()


@pytest.mark.parametrize("argv, expected", [
    (["optim.lrr=0.1,0.2"], "unknown config key 'optim.lrr'"),
    (["seed=,"], "a swept value is empty"),
    (["seed=0,1", "model.name=mlp,nope"], "unknown model 'nope'"),
    (["seed=0,1", "train.device=cpu,nonsense"], "'nonsense' is not a device"),
])
def test_bad_sweeps_create_nothing(capsys, out, argv, expected):
    refused(capsys, ["sweep", "tiny", "--out", str(out), *argv], expected)
    assert not out.exists()


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("value", ["nan", "inf", ".nan"])
def test_learning_rate_must_be_a_positive_finite_number(capsys, out, value):
    refused(capsys, ["run", "tiny", "--out", str(out), f"optim.lr={value}"], "optim.lr")
    assert not out.exists()


def test_empty_yaml_is_refused(tmp_path, capsys, out):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    refused(capsys, ["run", str(tmp_path / "empty.yaml"), "--out", str(out)], "is empty")
    assert not out.exists()


def test_limit_above_the_dataset_size(tmp_path, capsys, out):
    refused(capsys, ["run", "tiny", "--out", str(out), "data.limit=5000"],
            "data.limit=5000 is more than the 256 training images")
    refused(capsys, ["run", "tiny", "--out", str(out), "data.test_limit=129"],
            "the 128 test images")
    good = _npz(tmp_path / "d.npz", n_train=40)
    refused(capsys, ["run", "tiny", "--out", str(out), f"data.name=npz:{good}",
                     "data.options={}", "data.limit=41"], "the 40 training images")
    assert not out.exists()


def test_a_key_given_twice(tmp_path, capsys, out):
    refused(capsys, ["run", "tiny", "--out", str(out), "seed=1", "seed=2"], "seed is given twice")
    refused(capsys, ["run", "tiny", "--out", str(out), "optim={lr: 1}", "optim.lr=2"],
            "overlaps optim")
    refused(capsys, ["run", "tiny", "--out", str(out), "--device", "cpu", "train.device=cpu"],
            "--device and train.device")
    (tmp_path / "twice.yaml").write_text("seed: 1\noptim:\n  lr: 0.1\n  momentum: 0.9\n"
                                         "  lr: 0.2\n")
    refused(capsys, ["run", str(tmp_path / "twice.yaml"), "--out", str(out)],
            "key 'lr' is given twice (lines 3 and 5)")
    assert not out.exists()


def test_npz_arrays_of_the_wrong_type(tmp_path, capsys, out):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "float_labels.npz", x_train=rng.integers(0, 255, (40, 8, 8),
                                                                 dtype=np.uint8),
             y_train=np.zeros(40) + 0.5, x_test=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8),
             y_test=np.zeros(20))
    refused(capsys, ["run", "tiny", "--dry-run", f"data.name=npz:{tmp_path}/float_labels.npz",
                     "data.options={}"], "y_train has dtype float64")


def test_a_data_error_found_late_leaves_no_run_directory(tmp_path, capsys, out):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "bad_labels.npz", x_train=rng.integers(0, 255, (40, 8, 8),
                                                               dtype=np.uint8),
             y_train=np.arange(40) % 4 - 1, x_test=rng.integers(0, 255, (20, 8, 8),
                                                                dtype=np.uint8),
             y_test=np.arange(20) % 4)  # the headers are fine: only the reader sees label -1
    refused(capsys, ["run", "tiny", "--quiet", "--out", str(out),
                     f"data.name=npz:{tmp_path}/bad_labels.npz", "data.options={}"], "label")
    assert nothing_in(out)


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert main(["run", "tiny", "--dry-run"]) == 0
    capsys.readouterr()
