"""The model zoo: a registry of architectures, weights I/O and classifier helpers.

``create_model("resnet20", num_classes=10)`` builds a registered architecture;
``torchvision:NAME`` and ``timm:NAME`` build from those packages when installed.
"""

from underbudget.models import convnet, lenet, mlp, resnet, resnet_cifar, vgg, wrn  # noqa: F401
from underbudget.models.classifier import (
    FeatureExtractor,
    classifier_of,
    feature_dim,
    features,
    replace_classifier,
)
from underbudget.models.registry import create_model, list_models, model_options, register_model
from underbudget.models.summary import count_parameters
from underbudget.models.weight_init import init_weights, seeded_init
from underbudget.models.weights import load_weights, read_state_dict, save_weights

__all__ = [
    "FeatureExtractor",
    "classifier_of",
    "count_parameters",
    "create_model",
    "feature_dim",
    "features",
    "init_weights",
    "list_models",
    "load_weights",
    "model_options",
    "read_state_dict",
    "register_model",
    "replace_classifier",
    "save_weights",
    "seeded_init",
]
