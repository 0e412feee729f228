"""Export a finished run's deployed model: compact sparse and integer-quantized safetensors
files that load back exactly, and a model card (``underbudget export RUN``)."""

from .grid import recover_grid
from .layout import decode, encode, pack_bits, read_export, unpack_bits
from .run import ExportResult, export_run, load_model

__all__ = ["ExportResult", "decode", "encode", "export_run", "load_model", "pack_bits",
           "read_export", "recover_grid", "unpack_bits"]
