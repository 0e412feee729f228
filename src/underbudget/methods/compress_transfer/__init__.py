"""``compress_transfer``: prune or quantize a source model, transfer every variant by linear
probing, fine-tuning and visual prompting at several data budgets and seeds, and measure
accuracy and calibration (see ``docs/transfer.md``)."""

from .config import CompressTransferConfig
from .method import run_compress_transfer

__all__ = ["CompressTransferConfig", "run_compress_transfer"]
