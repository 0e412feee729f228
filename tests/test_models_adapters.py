"""torchvision:/timm: adapters, tested with stand-in packages (neither is installed here)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import underbudget.models as models_pkg
from underbudget.errors import ConfigError, MissingDependencyError
from underbudget.models import create_model
from underbudget.models.adapters import adapt_input_channels


def tiny_net(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, num_classes),
    )  # fmt: skip


@pytest.fixture
def fake_torchvision(monkeypatch):
    calls = []

    def get_model(name, **kwargs):
        calls.append((name, kwargs))
        return tiny_net()

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(list_models=lambda: ["tiny", "resnet18"], get_model=get_model)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    return calls


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []

    def create(name, num_classes=1000, in_chans=3, **kwargs):
        calls.append((name, num_classes, in_chans, kwargs))
        return tiny_net(1000, in_chans)  # a head of the wrong size, to be replaced

    timm = types.ModuleType("timm")
    timm.list_models = lambda: ["tiny_vit"]
    timm.create_model = create
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


@pytest.mark.parametrize("package", ["torchvision", "timm"])
def test_missing_package_gives_one_clear_error(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes "import package" fail
    with pytest.raises(MissingDependencyError) as info:
        create_model(f"{package}:resnet18")
    message = str(info.value)
    assert f"pip install {package}" in message and "underbudget[vision]" in message
    assert f"'{package}:resnet18'" in message


def test_torchvision_adapter_replaces_head_and_input(fake_torchvision):
    model = create_model("torchvision:tiny", num_classes=5, in_channels=1, weights=None)
    assert fake_torchvision == [("tiny", {"weights": None})]
    assert model[-1].out_features == 5 and model[0].in_channels == 1
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 5)
    assert model.underbudget_name == "torchvision:tiny"


def test_torchvision_unknown_name_suggests(fake_torchvision):
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        create_model("torchvision:resnt18")
    with pytest.raises(ConfigError, match="needs an architecture name"):
        create_model("torchvision:")


def test_timm_adapter_passes_classes_and_channels(fake_timm):
    model = create_model("timm:tiny_vit", num_classes=7, in_channels=2, pretrained=False)
    assert fake_timm == [("tiny_vit", 7, 2, {"pretrained": False})]
    assert model[-1].out_features == 7
    assert model(torch.randn(2, 2, 8, 8)).shape == (2, 7)


def test_adapted_first_conv_keeps_response_to_grey_images():
    model = tiny_net()
    old = model[0]
    adapt_input_channels(model, 1)
    grey = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        assert torch.allclose(model[0](grey), old(grey.expand(-1, 3, -1, -1)), atol=1e-6)
    assert model[0].kernel_size == old.kernel_size and model[0].padding == old.padding
    same = tiny_net()
    first = same[0]
    adapt_input_channels(same, 3)
    assert same[0] is first


def test_core_package_never_imports_optional_vision_libraries():
    for source in Path(models_pkg.__file__).parent.glob("*.py"):
        text = source.read_text()
        assert "import torchvision" not in text and "import timm" not in text, source.name
