"""Dataset readers: idx, CIFAR pickles, npz, image folders, digits, synthetic; resolution order,
downloads (from local file:// URLs) and the errors a user can cause."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import FASHION_DIR, has_fashion
from underbudget.data import (
    ImageSet,
    Loader,
    Splits,
    conform,
    list_datasets,
    load_dataset,
    register_dataset,
)
from underbudget.data.sources import download, locate
from underbudget.data.sources.safe_pickle import RefusedGlobal, safe_load
from underbudget.errors import ConfigError, DataError

# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _isolated_roots(monkeypatch, tmp_path_factory):
    """No user data root, an empty cache, and no system location unless a test adds one."""
    monkeypatch.delenv("UNDERBUDGET_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setattr(locate, "SYSTEM_LOCATIONS", {})


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the idx format (magic 0x0000 08 ndim, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_mnist(folder, n_train=30, n_test=20, gz=True, size=(6, 5), seed=0, **overrides):
    """Write the four idx files of a tiny MNIST-like dataset; return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = overrides.get(name, idx_bytes(array))
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def cifar_rows(n: int, rng) -> np.ndarray:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def dump_py2_style(obj, path):
    """Protocol 2 with bytes keys, as the official (Python 2) CIFAR files look once loaded."""
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10(root, per_batch=10, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = []
    for i in range(1, 6):
        data = cifar_rows(per_batch, rng)
        labels = [int(v) for v in (np.arange(per_batch) + i) % 10]
        dump_py2_style(
            {b"batch_label": b"x", b"data": data, b"labels": labels}, folder / f"data_batch_{i}"
        )
        batches.append((data, labels))
    test = cifar_rows(n_test, rng)
    test_labels = [int(v) for v in np.arange(n_test) % 10]
    dump_py2_style({b"data": test, b"labels": test_labels}, folder / "test_batch")
    names = [f"name{i}" for i in range(10)]
    dump_py2_style({b"label_names": [n.encode() for n in names]}, folder / "batches.meta")
    return batches, (test, test_labels), names


def png_folder(root, split, classes, per_class, size=(6, 6), mode="RGB", seed=0):
    """Write PNGs under root/split/<class>/ and return {class: [arrays in file order]}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        out[c] = []
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(root / split / c / f"img{i:03d}.png")
            out[c].append(arr)
    return out


# ---------------------------------------------------------------- registry


def test_registry_lists_builtin_readers_and_rejects_unknown_names():
    assert {
        "fashion-mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "imagefolder",
        "npz",
        "digits",
        "synthetic",
    } <= set(list_datasets())
    with pytest.raises(ConfigError, match="did you mean 'mnist'"):
        load_dataset("mnistt")
    with pytest.raises(ConfigError, match="option for dataset 'synthetic'"):
        load_dataset("synthetic", num_clases=3)
    with pytest.raises(ConfigError, match="channels"):
        load_dataset("synthetic", channels=2)
    with pytest.raises(ConfigError, match="needs a path"):
        load_dataset("npz")


def test_register_dataset_adds_a_custom_reader():
    @register_dataset("tiny-test-source")
    def tiny(arg, *, root=None, download=False, seed=0, image_size=None, channels=None, n=4):
        images = torch.full((n, 1, 2, 2), seed, dtype=torch.uint8)
        data = ImageSet(images, torch.zeros(n, dtype=torch.long), ["only"])
        return Splits("tiny", data, data, ["only"], (0.0,), (1.0,), False, f"arg={arg}")

    splits = load_dataset("tiny-test-source:hello", seed=7, n=3)
    assert len(splits.train) == 3 and splits.source == "arg=hello"
    assert int(splits.train.images[0, 0, 0, 0]) == 7
    assert "tiny-test-source" in list_datasets()


# ---------------------------------------------------------------- idx (MNIST family)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_reads_values_shapes_and_classes(tmp_path, gz):
    arrays = make_mnist(tmp_path / "mnist", gz=gz)
    splits = load_dataset("mnist", root=tmp_path)  # a data root holding mnist/
    assert splits.train.images.shape == (30, 1, 6, 5) and splits.test.images.shape == (20, 1, 6, 5)
    assert torch.equal(
        splits.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"])
    )
    assert torch.equal(
        splits.test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long()
    )
    assert splits.train.labels.dtype == torch.int64
    assert splits.classes == [str(i) for i in range(10)] and splits.flip is False
    assert splits.source == str(tmp_path / "mnist")
    assert splits.mean == (0.1307,) and splits.std == (0.3081,)
    json.dumps(splits.info())


def test_idx_files_in_raw_subfolder_and_dotted_names(tmp_path):
    make_mnist(tmp_path / "raw")
    assert len(load_dataset("mnist", root=tmp_path).train) == 30
    other = tmp_path / "dotted"
    other.mkdir()
    for f in (tmp_path / "raw").iterdir():
        stem, kind = f.name.split("-idx")
        (other / f"{stem}.idx{kind}").write_bytes(f.read_bytes())
    assert len(load_dataset("fashion-mnist", root=other).test) == 20


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("train-images-idx3-ubyte", b"\x08\x03\x00\x00" + bytes(100), "bad magic"),
        (
            "train-labels-idx1-ubyte",
            bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 30) + bytes(30),
            "not unsigned byte",
        ),
        (
            "train-labels-idx1-ubyte",
            bytes([0, 0, 8, 3]) + struct.pack(">3I", 30, 1, 1) + bytes(30),
            "3 dimensions, expected 1",
        ),
        (
            "t10k-images-idx3-ubyte",
            bytes([0, 0, 8, 3]) + struct.pack(">3I", 20, 6, 5) + bytes(599),
            "truncated",
        ),
        ("t10k-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">2I", 20, 6), "truncated"),
        (
            "t10k-labels-idx1-ubyte",
            bytes([0, 0, 8, 1]) + struct.pack(">I", 20) + bytes(25),
            "corrupt",
        ),
    ],
)
def test_corrupt_idx_files_raise_data_error_naming_the_file(tmp_path, name, data, message):
    make_mnist(tmp_path, gz=False, **{name: data})
    with pytest.raises(DataError, match=message) as info:
        load_dataset("mnist", root=tmp_path)
    assert name in str(info.value)


def test_truncated_gzip_is_reported(tmp_path):
    make_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as info:
        load_dataset("mnist", root=tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_label_out_of_range_count_mismatch_and_missing_class(tmp_path):
    labels = (np.arange(30) % 10).astype(np.uint8)
    labels[4] = 10
    make_mnist(tmp_path / "a", **{"train-labels-idx1-ubyte": idx_bytes(labels)})
    with pytest.raises(DataError, match="label 10 out of range") as info:
        load_dataset("mnist", root=tmp_path / "a")
    assert "train-labels" in str(info.value)

    make_mnist(tmp_path / "b", **{"t10k-labels-idx1-ubyte": idx_bytes(np.zeros(19, np.uint8))})
    with pytest.raises(DataError, match="20 images but 19 labels"):
        load_dataset("mnist", root=tmp_path / "b")

    no_nine = (np.arange(30) % 9).astype(np.uint8)
    make_mnist(tmp_path / "c", **{"train-labels-idx1-ubyte": idx_bytes(no_nine)})
    with pytest.raises(DataError, match="no example of class"):
        load_dataset("mnist", root=tmp_path / "c")


def test_partial_copy_lists_missing_files(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path)


# ---------------------------------------------------------------- resolution order


def test_resolution_order_root_then_env_then_system_then_cache(tmp_path, monkeypatch):
    for i, where in enumerate(["root", "env/mnist", "system", "cache/underbudget/data/mnist"]):
        make_mnist(tmp_path / where, n_train=10 + 10 * i)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(locate, "SYSTEM_LOCATIONS", {"mnist": [str(tmp_path / "system")]})
    monkeypatch.setenv("UNDERBUDGET_DATA", str(tmp_path / "env"))
    assert len(load_dataset("mnist", root=tmp_path / "root").train) == 10
    assert len(load_dataset("mnist", root=tmp_path / "nowhere").train) == 20
    monkeypatch.delenv("UNDERBUDGET_DATA")
    assert len(load_dataset("mnist").train) == 30
    monkeypatch.setattr(locate, "SYSTEM_LOCATIONS", {})
    assert len(load_dataset("mnist").train) == 40


def test_not_found_message_lists_every_place_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("UNDERBUDGET_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(locate, "SYSTEM_LOCATIONS", {"fashion-mnist": [str(tmp_path / "sys")]})
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=tmp_path / "mine")
    message = str(info.value)
    for place in [
        tmp_path / "mine",
        tmp_path / "mine" / "fashion-mnist",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "sys",
        locate.cache_root() / "fashion-mnist",
    ]:
        assert str(place) in message
    assert "sudo apt-get install dataset-fashion-mnist" in message
    assert "export UNDERBUDGET_DATA=" in message
    assert "data.download=true" in message
    assert "train-images-idx3-ubyte" in message

    monkeypatch.delenv("UNDERBUDGET_DATA")
    with pytest.raises(DataError, match="UNDERBUDGET_DATA is not set") as info:
        load_dataset("cifar10")
    assert "apt-get" not in str(info.value) and "cifar-10-batches-py" in str(info.value)


def _serve(tmp_path, name, files):
    """Point the official resource list of ``name`` at local file:// copies of ``files``."""
    served = tmp_path / "served"
    served.mkdir(exist_ok=True)
    resources = []
    for fname, data in files.items():
        (served / fname).write_bytes(data)
        md5 = hashlib.md5(data).hexdigest()
        resources.append(download.Resource(fname, md5, ((served / fname).as_uri(),)))
    return resources


def test_download_only_when_asked_verified_and_atomic(tmp_path, monkeypatch):
    make_mnist(tmp_path / "official")
    files = {f.name: f.read_bytes() for f in (tmp_path / "official").iterdir()}
    monkeypatch.setitem(download.RESOURCES, "mnist", _serve(tmp_path, "mnist", files))
    monkeypatch.setenv("UNDERBUDGET_DATA", str(tmp_path / "data"))
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist")
    splits = load_dataset("mnist", download=True)
    assert splits.source == str(tmp_path / "data" / "mnist") and len(splits.train) == 30
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(files)
    assert len(load_dataset("mnist").test) == 20  # found again without downloading


def test_download_checksum_mismatch_leaves_nothing_behind(tmp_path, monkeypatch):
    res = _serve(tmp_path, "mnist", {"train-images-idx3-ubyte.gz": b"not the real file"})
    bad = [download.Resource(r.filename, "0" * 32, r.urls) for r in res]
    monkeypatch.setitem(download.RESOURCES, "mnist", bad)
    with pytest.raises(DataError, match="expected 0000") as info:
        load_dataset("mnist", root=tmp_path / "target", download=True)
    assert "could not download train-images-idx3-ubyte.gz" in str(info.value)
    assert list((tmp_path / "target").iterdir()) == []


def test_download_tarball_is_extracted(tmp_path, monkeypatch):
    import io
    import tarfile

    make_cifar10(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    res = _serve(tmp_path, "cifar10", {"cifar-10-python.tar.gz": buf.getvalue()})
    monkeypatch.setitem(
        download.RESOURCES,
        "cifar10",
        [download.Resource(r.filename, r.md5, r.urls, extract=True) for r in res],
    )
    splits = load_dataset("cifar10", download=True)
    assert len(splits.train) == 50
    assert splits.source == str(locate.cache_root() / "cifar10" / "cifar-10-batches-py")


# ---------------------------------------------------------------- CIFAR


def test_cifar10_pickles_read_with_restricted_unpickler(tmp_path):
    batches, (test, test_labels), names = make_cifar10(tmp_path)
    splits = load_dataset("cifar10", root=tmp_path)
    assert splits.train.images.shape == (50, 3, 32, 32) and len(splits.test) == 10
    first = batches[0][0][0]
    expected = torch.from_numpy(first.reshape(3, 32, 32))  # R plane, then G, then B
    assert torch.equal(splits.train.images[0], expected)
    assert torch.equal(splits.train.images[0, 1].reshape(-1), torch.from_numpy(first[1024:2048]))
    assert splits.train.labels[:10].tolist() == batches[0][1]
    assert splits.test.labels.tolist() == test_labels
    assert splits.classes == names and splits.flip is True
    assert splits.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 200), ("test", 20)):
        fine = [int(v) for v in np.arange(n) % 100]
        coarse = [v // 5 for v in fine]
        pickle.dump(
            {"data": cifar_rows(n, rng), "fine_labels": fine, "coarse_labels": coarse},
            open(folder / split, "wb"),
            protocol=4,
        )
    pickle.dump(
        {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
        open(folder / "meta", "wb"),
    )
    fine = load_dataset("cifar100", root=tmp_path)
    coarse = load_dataset("cifar100", root=tmp_path, label_type="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert torch.equal(coarse.train.labels, fine.train.labels // 5)
    with pytest.raises(ConfigError, match="label_type"):
        load_dataset("cifar100", root=tmp_path, label_type="medium")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    payload = {b"data": _Evil(marker), b"labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(payload))
    with pytest.raises(DataError, match="refusing to unpickle") as info:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_3" in str(info.value) and "posix.system" in str(info.value)
    assert not marker.exists()
    with pytest.raises(RefusedGlobal):
        safe_load(pickle.dumps(print))
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert np.array_equal(safe_load(pickle.dumps({"a": arr}, protocol=2))["a"], arr)


def test_truncated_or_wrong_cifar_batches(tmp_path):
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        load_dataset("cifar10", root=tmp_path)
    assert "data_batch_2" in str(info.value)
    dump_py2_style({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, path)
    with pytest.raises(DataError, match="3072"):
        load_dataset("cifar10", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    path.unlink()
    with pytest.raises(DataError, match="missing data_batch_2"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_from_class_folders_and_npz(tmp_path):
    names = ["cat", "dog"]
    png_folder(tmp_path / "folders", "train", names, 3, size=(32, 32))
    png_folder(tmp_path / "folders", "test", names, 2, size=(32, 32), seed=1)
    splits = load_dataset("cifar10", root=tmp_path / "folders")
    assert splits.classes == names and len(splits.train) == 6 and splits.name == "cifar10"
    assert splits.mean == (0.4914, 0.4822, 0.4465)
    rng = np.random.default_rng(0)
    (tmp_path / "z").mkdir()
    np.savez(
        tmp_path / "z" / "cifar10.npz",
        x_train=rng.integers(0, 256, (8, 32, 32, 3), np.uint8),
        y_train=np.arange(8) % 2,
        x_test=rng.integers(0, 256, (4, 32, 32, 3), np.uint8),
        y_test=np.arange(4) % 2,
    )
    assert load_dataset("cifar10", root=tmp_path / "z").train.images.shape == (8, 3, 32, 32)


# ---------------------------------------------------------------- npz


def _npz(path, layout="nhwc", **extra):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (12, 5, 4, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    if layout == "nchw":
        x_train, x_test = x_train.transpose(0, 3, 1, 2), x_test.transpose(0, 3, 1, 2)
    arrays = dict(
        x_train=x_train, y_train=np.arange(12) % 3, x_test=x_test, y_test=np.arange(6) % 3
    )
    arrays.update(extra)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_npz_nhwc_and_nchw_give_the_same_images(tmp_path):
    arrays = _npz(tmp_path / "a.npz", "nhwc", classes=np.array(["x", "y", "z"]))
    _npz(tmp_path / "b.npz", "nchw")
    a = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    b = load_dataset("npz", root=str(tmp_path / "b.npz"))
    assert a.train.images.shape == (12, 3, 5, 4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert torch.equal(a.train.images[3, :, 1, 2], torch.from_numpy(arrays["x_train"][3, 1, 2]))
    assert a.classes == ["x", "y", "z"] and b.classes == ["0", "1", "2"]
    stats = a.train.images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(a.mean, stats.mean(1).numpy(), atol=1e-6)
    assert np.allclose(a.std, stats.std(1, unbiased=False).numpy(), atol=1e-6)


def test_npz_errors(tmp_path):
    _npz(tmp_path / "m.npz", y_test=None)
    with pytest.raises(DataError, match="y_test"):
        load_dataset(f"npz:{tmp_path / 'm.npz'}")
    _npz(tmp_path / "f.npz", x_test=np.zeros((6, 5, 4, 3), np.float32))
    with pytest.raises(DataError, match="uint8"):
        load_dataset(f"npz:{tmp_path / 'f.npz'}")
    _npz(tmp_path / "l.npz", y_test=np.array([0, 1, 2, 3, 0, 1]), classes=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="label 3 out of range"):
        load_dataset(f"npz:{tmp_path / 'l.npz'}")
    _npz(tmp_path / "c.npz", y_train=np.arange(11) % 3)
    with pytest.raises(DataError, match="12 images but 11 labels"):
        load_dataset(f"npz:{tmp_path / 'c.npz'}")
    good = tmp_path / "a.npz"
    _npz(good)
    (tmp_path / "t.npz").write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="not a readable npz"):
        load_dataset(f"npz:{tmp_path / 't.npz'}")
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")


# ---------------------------------------------------------------- image folders


def test_imagefolder_reads_pixels_labels_and_val(tmp_path):
    train = png_folder(tmp_path, "train", ["b_cls", "a_cls"], 3)
    png_folder(tmp_path, "test", ["a_cls"], 2, seed=1)
    png_folder(tmp_path, "val", ["a_cls", "b_cls"], 1, seed=2)
    splits = load_dataset(f"imagefolder:{tmp_path}")
    assert splits.classes == ["a_cls", "b_cls"] and splits.image_shape == (3, 6, 6)
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(splits.train.images[4], torch.from_numpy(train["b_cls"][1]).permute(2, 0, 1))
    assert len(splits.test) == 2 and len(splits.val) == 2 and splits.info()["val_size"] == 2
    assert splits.flip is True and load_dataset(f"imagefolder:{tmp_path}", flip=False).flip is False


def test_imagefolder_gray_sizes_and_errors(tmp_path):
    png_folder(tmp_path / "g", "train", ["x", "y"], 2, mode="L")
    png_folder(tmp_path / "g", "test", ["x", "y"], 1, mode="L", size=(9, 7))
    with pytest.raises(DataError, match="image_size"):
        load_dataset(f"imagefolder:{tmp_path / 'g'}")
    splits = load_dataset(f"imagefolder:{tmp_path / 'g'}", image_size=8)
    assert splits.image_shape == (1, 8, 8)

    png_folder(tmp_path / "u", "train", ["x"], 2)
    png_folder(tmp_path / "u", "test", ["x", "z"], 1)
    with pytest.raises(DataError, match="'z'"):
        load_dataset(f"imagefolder:{tmp_path / 'u'}")

    png_folder(tmp_path / "e", "train", ["x"], 2)
    png_folder(tmp_path / "e", "test", ["x"], 1)
    (tmp_path / "e" / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(f"imagefolder:{tmp_path / 'e'}")
    (tmp_path / "e" / "train" / "empty").rmdir()
    (tmp_path / "e" / "train" / "x" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png"):
        load_dataset(f"imagefolder:{tmp_path / 'e'}")
    with pytest.raises(DataError, match="test/"):
        load_dataset(f"imagefolder:{tmp_path / 'nothing'}")


# ---------------------------------------------------------------- conversion


def test_image_size_and_channels_convert_and_recompute_stats(tmp_path):
    make_mnist(tmp_path, size=(8, 8))
    plain = load_dataset("mnist", root=tmp_path)
    big = load_dataset("mnist", root=tmp_path, image_size=12, channels=3)
    assert big.image_shape == (3, 12, 12) and big.train.images.dtype == torch.uint8
    ref = (
        F.interpolate(
            plain.train.images.float(), size=(12, 12), mode="bilinear", align_corners=False
        )
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )
    assert torch.equal(big.train.images[:, 0], ref[:, 0])
    assert torch.equal(big.train.images[:, 0], big.train.images[:, 2])
    flat = big.train.images[:, 0].double().div(255)
    assert big.mean == pytest.approx((flat.mean().item(),) * 3, abs=1e-6)
    assert big.std == pytest.approx((flat.std(unbiased=False).item(),) * 3, abs=1e-6)
    gray = load_dataset("synthetic", channels=3, image_size=8, n_train=20, n_test=5)
    one = conform(gray, channels=1)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    expected = (gray.train.images.float() * weights).sum(1, keepdim=True).round()
    assert torch.equal(one.train.images, expected.to(torch.uint8))


# ---------------------------------------------------------------- digits and synthetic


def test_digits_shapes_stratified_split_and_seed():
    pytest.importorskip("sklearn")
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=0)
    c = load_dataset("digits", seed=1)
    assert len(a.train) + len(a.test) == 1797 and a.image_shape == (1, 8, 8)
    assert a.flip is False and a.num_classes == 10
    assert int(a.train.images.max()) == 255 and int(a.train.images.min()) == 0
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.test.labels, c.test.labels)
    share = a.test.class_counts().double() / (a.test.class_counts() + a.train.class_counts())
    assert torch.all((share - 0.25).abs() < 0.02)
    from sklearn.datasets import load_digits

    raw = load_digits().images
    scaled = torch.from_numpy(np.rint(raw * 255 / 16).astype(np.uint8))
    all_images = torch.cat([a.train.images, a.test.images])[:, 0]
    assert sorted(map(bytes, all_images.numpy())) == sorted(map(bytes, scaled.numpy()))
    big = load_dataset("digits", image_size=32, channels=3)
    assert big.image_shape == (3, 32, 32)
    assert load_dataset("digits", image_size=28, channels=1).image_shape == (1, 28, 28)


def test_synthetic_shapes_reproducibility_and_learnability():
    a = load_dataset(
        "synthetic", seed=3, num_classes=4, image_size=12, channels=3, n_train=200, n_test=100
    )
    b = load_dataset(
        "synthetic", seed=3, num_classes=4, image_size=12, channels=3, n_train=200, n_test=100
    )
    c = load_dataset(
        "synthetic", seed=4, num_classes=4, image_size=12, channels=3, n_train=200, n_test=100
    )
    assert a.train.images.shape == (200, 3, 12, 12) and len(a.test) == 100
    assert a.train.class_counts().tolist() == [50] * 4
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)

    s = load_dataset("synthetic", seed=0)
    x = s.train.images.flatten(1).float() / 255
    xt = s.test.images.flatten(1).float() / 255
    centroids = torch.stack([x[s.train.labels == k].mean(0) for k in range(10)])
    nearest = torch.cdist(xt, centroids).argmin(1)
    assert (nearest == s.test.labels).float().mean() > 0.8  # chance is 0.1

    # a linear model trained through the batched Loader for a few epochs is far above chance
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = Loader(s.train, 100, shuffle=True, mean=s.mean, std=s.std, seed=0)
    for epoch in range(3):
        loader.set_epoch(epoch)
        for xb, yb in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    xt_norm, yt = next(iter(Loader(s.test, len(s.test), mean=s.mean, std=s.std)))
    accuracy = (model(xt_norm).argmax(1) == yt).float().mean()
    assert accuracy > 0.6


# ---------------------------------------------------------------- the real Fashion-MNIST


@has_fashion
def test_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.setattr(locate, "SYSTEM_LOCATIONS", {"fashion-mnist": [FASHION_DIR]})
    splits = load_dataset("fashion-mnist")
    assert len(splits.train) == 60000 and len(splits.test) == 10000
    assert splits.image_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.train.class_counts().tolist() == [6000] * 10
    assert splits.test.class_counts().tolist() == [1000] * 10
    assert splits.source == FASHION_DIR and splits.classes[0] == "T-shirt/top"
    flat = splits.train.images.double().div(255)
    assert splits.mean[0] == pytest.approx(flat.mean().item(), abs=1e-3)
    assert splits.std[0] == pytest.approx(flat.std().item(), abs=1e-3)
