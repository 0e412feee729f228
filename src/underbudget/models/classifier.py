"""Find, replace and bypass a model's classifier: the helpers transfer learning needs."""

from __future__ import annotations

import torch
from torch import nn

from underbudget.errors import ConfigError
from underbudget.models.validate import check_int
from underbudget.models.weight_init import seeded_init


def model_label(model: nn.Module) -> str:
    """A short name for messages: the registry name when known, else the class name."""
    return getattr(model, "underbudget_name", None) or type(model).__name__


def classifier_of(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's final ``nn.Linear`` (last in module order) and its qualified name."""
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ConfigError(
            f"model {model_label(model)} has no nn.Linear layer to use as its classifier; "
            "give it a linear head or pass the head's features yourself"
        )
    return found


def replace_classifier(model: nn.Module, num_classes: int, *, seed: int | None = None) -> nn.Linear:
    """Swap the classifier for a fresh ``Linear(in_features, num_classes)``; return it.

    The new head keeps the old one's bias setting, device and dtype; ``seed`` makes its
    initialisation reproducible without touching the global RNG.
    """
    check_int(model_label(model), "num_classes", num_classes)
    name, old = classifier_of(model)
    if name == "":
        raise ConfigError("the model is itself a single nn.Linear; create a new layer instead")
    with seeded_init(seed, "classifier", name, num_classes):
        head = nn.Linear(
            old.in_features,
            num_classes,
            bias=old.bias is not None,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, head)
    return head


def feature_dim(model: nn.Module) -> int:
    """Width of the penultimate features (the classifier's ``in_features``)."""
    return classifier_of(model)[1].in_features


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features of ``model`` on ``x``: the input its classifier receives.

    Works on any model with a linear head; the model is not changed (a temporary forward
    pre-hook on the classifier reads its input). Gradients flow as usual.
    """
    _, head = classifier_of(model)
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0])

    handle = head.register_forward_pre_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    if not captured:
        raise ConfigError(
            f"the classifier of {model_label(model)} was not called in forward; "
            "features() needs a model whose last nn.Linear is its head"
        )
    return captured[-1]


class FeatureExtractor(nn.Module):
    """Wrap a model so that calling it returns penultimate features instead of logits.

    Shares the wrapped model's parameters (nothing is copied); ``out_features`` is the
    feature width, e.g. for a linear probe ``nn.Linear(extractor.out_features, classes)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out_features = feature_dim(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return features(self.model, x)
