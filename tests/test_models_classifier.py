"""classifier_of, replace_classifier, feature_dim, features and FeatureExtractor."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from underbudget.errors import ConfigError
from underbudget.models import (
    FeatureExtractor,
    classifier_of,
    create_model,
    feature_dim,
    features,
    replace_classifier,
)

CASES = [
    ("mlp", {"hidden": (12, 6)}, "fc", 6),
    ("lenet5", {}, "fc3", 84),
    ("convnet", {"widths": (4, 8)}, "fc", 8),
    ("resnet20", {}, "fc", 64),
    ("resnet18", {}, "fc", 512),
    ("vgg11_bn", {"hidden": 32}, "classifier.3", 32),
    ("vgg11_bn", {"hidden": 0}, "classifier.1", 512),
    ("wrn", {"depth": 10, "width": 1}, "fc", 64),
]


@pytest.mark.parametrize("name, options, head, dim", CASES)
def test_helpers_on_registered_models(name, options, head, dim):
    model = create_model(name, num_classes=10, in_channels=1, image_size=8, **options).eval()
    found, layer = classifier_of(model)
    assert found == head and layer is model.get_submodule(head)
    assert feature_dim(model) == dim
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        feats = features(model, x)
        assert feats.shape == (2, dim)
        assert torch.allclose(layer(feats), model(x), atol=1e-6)  # head(features) == logits
    assert classifier_of(model)[1] is layer  # the model is left unchanged

    new = replace_classifier(model, 3)
    assert model.get_submodule(head) is new and new is not layer
    assert (new.in_features, new.out_features) == (dim, 3)
    assert model(x).shape == (2, 3)


def test_features_match_a_hand_written_resnet20_trunk():
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        h = model.relu(model.bn1(model.conv1(x)))
        h = model.layer3(model.layer2(model.layer1(h)))
        assert torch.allclose(features(model, x), h.mean(dim=(2, 3)), atol=1e-6)


def test_replace_keeps_device_dtype_and_bias_and_is_seedable():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)).double()
    head = replace_classifier(model, 7, seed=1)
    assert head.weight.dtype == torch.float64 and head.bias is None
    assert isinstance(model[2], nn.Linear) and model[2] is head
    again = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)).double()
    assert torch.equal(replace_classifier(again, 7, seed=1).weight, head.weight)
    with torch.device("meta"):
        meta_model = create_model("resnet20")
    assert replace_classifier(meta_model, 4).weight.device.type == "meta"


def test_feature_extractor_shares_weights_and_backpropagates():
    model = create_model("convnet", widths=(4, 8))
    extractor = FeatureExtractor(model)
    assert extractor.out_features == 8
    assert {id(p) for p in extractor.parameters()} == {id(p) for p in model.parameters()}
    out = extractor(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 8)
    out.sum().backward()
    assert model.features[0].weight.grad is not None
    assert not model.fc._forward_pre_hooks  # hooks are removed after each call


def test_clear_errors_without_a_linear_head():
    conv_only = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError, match="no nn.Linear layer"):
        classifier_of(conv_only)
    with pytest.raises(ConfigError, match="itself a single nn.Linear"):
        replace_classifier(nn.Linear(3, 2), 4)
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1"):
        replace_classifier(create_model("lenet5"), 0)

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, 3)
            self.spare = nn.Linear(3, 2)

        def forward(self, x):
            return self.body(x)

    with pytest.raises(ConfigError, match="was not called in forward"):
        features(Unused(), torch.randn(2, 3))
