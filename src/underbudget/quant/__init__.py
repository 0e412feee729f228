"""Fake quantization: post-training (weights and calibrated activations) and LSQ QAT."""

from underbudget.quant.activation import (
    ActivationQuantizer,
    activation_quantizers,
    attach_input_quantizer,
    calibrate,
    input_quantized_layers,
    insert_activation_quantizers,
)
from underbudget.quant.fake import QuantRecord, fake_quantize, quantize_model, quantize_weights
from underbudget.quant.qat import (
    LSQQuantizer,
    QuantConv1d,
    QuantConv2d,
    QuantConv3d,
    QuantLinear,
    convert,
    lsq_fake_quantize,
    prepare_qat,
)

__all__ = [
    "ActivationQuantizer",
    "LSQQuantizer",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConv3d",
    "QuantLinear",
    "QuantRecord",
    "activation_quantizers",
    "attach_input_quantizer",
    "calibrate",
    "convert",
    "fake_quantize",
    "input_quantized_layers",
    "insert_activation_quantizers",
    "lsq_fake_quantize",
    "prepare_qat",
    "quantize_model",
    "quantize_weights",
]
