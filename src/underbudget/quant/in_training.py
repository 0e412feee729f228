"""The ``precision`` section applied to any training: QAT while training, the deployed model.

One home for what every method does with ``precision`` (the ``train`` method and every stage
of the ``anytime`` method call the same three functions):

- :func:`prepare_for_training`: with ``mode: qat`` the Conv/Linear layers become the LSQ
  layers of :mod:`underbudget.quant.qat` (per-output-channel weight steps at
  ``weight_bits``; the input of every layer at ``act_bits`` when it is set) BEFORE the
  optimizer is built, so the learned steps train and are saved in every checkpoint. A
  sparse run quantizes with ``keep_support``: pruned weights (exactly 0) stay 0 and no kept
  weight rounds to 0, so the density after quantization is the masks' density.
- :func:`deploy`: the model that is evaluated last and saved: the converted QAT model (plain
  layers holding the quantized weights, fixed input quantizers), else the float model
  itself (``mode: ptq`` is a stage of its own after training, :mod:`underbudget.stages`).
- :func:`precision_summary`: bits, the density measured on the deployed weights, the number
  of distinct values per output channel, and deployed bytes at the weight bit width.

The QAT model in eval mode computes exactly what the converted one computes, so the
evaluations made during training (every anytime stage) are those of the quantized model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from underbudget.errors import CheckpointError
from underbudget.quant.qat import QAT_LAYERS, LSQQuantizer, convert, prepare_qat
from underbudget.sections import PrecisionConfig
from underbudget.sparsity.cost import _tensor_bytes, cost
from underbudget.sparsity.mask import MaskSet
from underbudget.sparsity.targets import prunable_parameters, unwrap

FLOAT_BITS = 32


def is_qat(precision: PrecisionConfig) -> bool:
    """Whether ``precision`` asks for quantization-aware training."""
    return precision.mode == "qat"


def prepare_for_training(
    model: nn.Module, precision: PrecisionConfig, sparse: bool, example: Tensor | None = None
) -> nn.Module:
    """The model to train: LSQ-prepared in place for ``mode: qat``, else ``model`` itself.

    ``sparse``: the run keeps masks, so quantization keeps each weight's zero/nonzero status.
    ``example``: a batch of training inputs that initialises the activation steps now (see
    :func:`initialize_steps`). Call before building the optimizer (and before a checkpoint is
    restored into it).
    """
    if not is_qat(precision):
        return model
    model = prepare_qat(
        model,
        precision.weight_bits,
        activations=precision.act_bits is not None,
        act_bits=precision.act_bits,
        per_channel=True,
        keep_support=sparse,
    )
    if example is not None and precision.act_bits is not None:
        initialize_steps(model, example)
    return model


@torch.no_grad()
def initialize_steps(model: nn.Module, x: Tensor) -> None:
    """Initialise the activation steps from one forward pass of ``x`` (train mode), leaving
    every other buffer (normalisation statistics) and the RNG as they were.

    Done before training so that a pass which restores the model's buffers afterwards (the
    scoring passes of data-driven pruning criteria) never meets a half-initialised quantizer.
    """
    quantizers = {id(m) for m in model.modules() if isinstance(m, LSQQuantizer)}
    keep = {
        f"{n}.{b}" if n else b: t.detach().clone()
        for n, m in model.named_modules() if id(m) not in quantizers
        for b, t in m.named_buffers(recurse=False)
    }
    was_training = model.training
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.train()
        try:
            model(x.to(device))
        finally:
            model.train(was_training)
    buffers = dict(model.named_buffers())
    for name, value in keep.items():
        buffers[name].copy_(value)


def qat_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The LSQ layers of ``model`` by module name."""
    return {n: m for n, m in unwrap(model).named_modules() if isinstance(m, QAT_LAYERS)}


@torch.no_grad()
def weight_steps(model: nn.Module) -> dict[str, Tensor]:
    """The learned weight step of every LSQ layer, by weight name (``<layer>.weight``)."""
    return {
        (f"{n}.weight" if n else "weight"): m.weight_quantizer.effective_step().detach().clone()
        for n, m in qat_layers(model).items()
    }


@torch.no_grad()
def quantized_density(model: nn.Module, names: Iterable[str]) -> float:
    """Nonzero fraction of the weights ``names`` as the forward pass uses them (fake-quantized
    for LSQ layers, as stored otherwise)."""
    model = unwrap(model)
    layers = qat_layers(model)
    nnz = numel = 0
    for name in names:
        module_name, _, leaf = name.rpartition(".")
        layer = layers.get(module_name) if leaf == "weight" else None
        w = layer.quantized_weight() if layer is not None else model.get_parameter(name)
        nnz += int(w.count_nonzero())
        numel += w.numel()
    return nnz / numel if numel else 1.0


def _check_masks(model: nn.Module, masks: MaskSet) -> None:
    """Rebind ``masks`` to the converted parameters and check pruned weights are exactly 0."""
    masks.update(dict(masks.items()))  # new parameter objects: drop the cached binding
    masks.bind(model)
    for name, mask in masks.items():
        w = model.get_parameter(name).detach()
        revived = int((w[~mask.to(w.device)] != 0).sum())
        if revived:
            raise CheckpointError(
                f"{revived} pruned weight(s) of {name} are nonzero after quantization; "
                "the model and its masks disagree"
            )


@torch.no_grad()
def deploy(
    model: nn.Module, precision: PrecisionConfig, masks: MaskSet | None = None
) -> tuple[nn.Module, dict[str, Tensor]]:
    """The model to evaluate and save, and the weight steps of a converted QAT model.

    ``qat``: :func:`~underbudget.quant.qat.convert` IN PLACE (the trained model becomes the
    plain quantized one); with ``masks``, the masks are rebound to the converted parameters
    and checked against them. Otherwise ``model`` as it is.
    """
    if not is_qat(precision):
        return model, {}
    steps = weight_steps(model)
    model = convert(model)
    if masks is not None:
        _check_masks(model, masks)
    return model, steps


def _prunable(model: nn.Module, masks: MaskSet | None) -> list[str]:
    return masks.names() if masks is not None else list(prunable_parameters(model))


@torch.no_grad()
def max_levels(model: nn.Module, names: Iterable[str]) -> int:
    """The largest number of distinct values in one output channel of the weights ``names``."""
    most = 0
    for name in names:
        w = unwrap(model).get_parameter(name).detach()
        rows = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
        most = max(most, max(int(torch.unique(r).numel()) for r in rows))
    return most


def precision_summary(
    model: nn.Module, precision: PrecisionConfig, masks: MaskSet | None, input_shape: Any
) -> dict[str, Any]:
    """What the deployed model's precision is and costs, measured on its weights.

    ``weight_bits``/``act_bits`` (32 for float), ``density_deployed`` (nonzero prunable
    weights of the deployed model over prunable ones), ``max_levels_per_channel`` (distinct
    values in one output channel, quantized models only), ``bytes_deployed``
    (prunable weights at the weight bit width in the smaller of dense, bitmask and CSR
    storage; other parameters float32; plus one float32 step per quantized channel).
    """
    model = unwrap(model)
    names = _prunable(model, masks)
    quantized = precision.mode != "none"
    bits = precision.weight_bits if quantized else FLOAT_BITS
    c = cost(model, input_shape, masks)
    layers = c["layers"]
    total = 0.0
    for name, p in model.named_parameters():
        if name in names:
            nnz = layers[name]["nonzeros"]
            sizes = _tensor_bytes(p.numel(), nnz, p.shape[0] if p.dim() else 1, bits)
            total += sizes["best"] + (4 * p.shape[0] if quantized else 0)
        else:
            total += 4 * p.numel()
    nnz = sum(layers[n]["nonzeros"] for n in names)
    numel = sum(layers[n]["params"] for n in names)
    act = precision.act_bits if quantized and precision.act_bits is not None else FLOAT_BITS
    out = {
        "precision_mode": precision.mode,
        "weight_bits": bits,
        "act_bits": act,
        "density_deployed": nnz / numel if numel else 1.0,
        "bytes_deployed": total,
    }
    if quantized:
        out["max_levels_per_channel"] = max_levels(model, names)
    return out
