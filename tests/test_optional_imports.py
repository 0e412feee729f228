"""Optional packages: any import failure is one message naming the extra and the cause."""

from __future__ import annotations

import sys

import pytest
import torch

from underbudget.errors import MissingDependencyError, require
from underbudget.models import create_model
from underbudget.models.adapters import (
    check_torchvision_pairing,
    torchvision_for,
    vision_install_hint,
)


@pytest.fixture
def broken_package(tmp_path, monkeypatch):
    """Put a package on sys.path whose import runs ``body`` (and forget it afterwards)."""
    made = []

    def make(name: str, body: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "__init__.py").write_text(body)
        monkeypatch.delitem(sys.modules, name, raising=False)
        made.append(name)

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for name in made:
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        ("raise RuntimeError('operator torchvision::nms does not exist')",
         "RuntimeError: operator torchvision::nms does not exist"),
        ("raise OSError('libtorchvision.so: undefined symbol: _ZN3c10')",
         "OSError: libtorchvision.so: undefined symbol"),
        ("import torch\ntorch.no_such_thing", "AttributeError"),
    ],
)
def test_a_broken_binary_names_the_extra_and_the_cause(broken_package, body, cause):
    broken_package("torchvision", body)
    with pytest.raises(MissingDependencyError) as info:
        create_model("torchvision:resnet18")
    message = str(info.value)
    assert "'torchvision:resnet18'" in message and "fails to import" in message
    assert cause in message
    assert "pip install 'underbudget[vision]'" in message
    assert f"torchvision {torchvision_for()}.x" in message  # the release that fits this torch


def test_a_right_version_built_for_another_torch_build_is_told_so(broken_package, tmp_path):
    version = f"{torchvision_for()}.0"
    broken_package("torchvision", "raise RuntimeError('operator torchvision::nms does not exist')")
    meta = tmp_path / f"torchvision-{version}.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Name: torchvision\nVersion: {version}\n")
    with pytest.raises(MissingDependencyError) as info:
        create_model("torchvision:resnet18")
    message = str(info.value)
    assert f"torchvision {version} fits torch {torch.__version__} by version" in message
    assert "same index as torch, or build it from source" in message


def test_timm_failing_through_torchvision_names_vision(broken_package):
    broken_package("torchvision", "raise RuntimeError('operator torchvision::nms does not exist')")
    broken_package("timm", "import torchvision")
    with pytest.raises(MissingDependencyError) as info:
        create_model("timm:resnet18")
    message = str(info.value)
    assert "'timm:resnet18'" in message and "torchvision::nms" in message
    assert "pip install 'underbudget[vision]' (or pip install timm)" in message


def test_a_missing_dependency_of_the_package_is_not_called_missing(broken_package):
    broken_package("timm", "import huggingface_hub_not_here")
    with pytest.raises(MissingDependencyError, match="installed but fails to import") as info:
        require("timm", "vision", "model 'timm:x'")
    assert "No module named 'huggingface_hub_not_here'" in str(info.value)


def test_torchvision_built_for_another_torch_is_refused(broken_package):
    broken_package("torchvision", "__version__ = '0.20.1+cpu'\n")
    with pytest.raises(MissingDependencyError) as info:
        create_model("torchvision:resnet18")
    message = str(info.value)
    assert "torchvision 0.20.1+cpu (built for torch 2.5)" in message
    assert f"needs torchvision {torchvision_for()}.x" in message


def test_pairing_rule_and_install_hint():
    assert torchvision_for("2.5.1") == "0.20" and torchvision_for("2.13.0+cpu") == "0.28"
    assert torchvision_for("1.13.1") is None and torchvision_for("nightly") is None
    hint = vision_install_hint("2.13.0+cpu")
    assert "pip install 'torchvision==0.28.*' 'torch==2.13.0'" in hint
    assert "--index-url https://download.pytorch.org/whl/cpu" in hint
    assert "--index-url" not in vision_install_hint("2.13.0a0+git1234")
    check_torchvision_pairing("0.20.1", "2.5.1")  # a matching pair passes
    with pytest.raises(MissingDependencyError, match="torchvision 0.20.x"):
        check_torchvision_pairing("0.28.0", "2.5.1")
    assert torch.__version__  # the hint above is built for the torch in use by default
