"""What every quantizer shares: bit-width checks, the largest symmetric code, the layer types."""

from __future__ import annotations

from torch import nn

from underbudget.errors import ConfigError

#: layer types whose weights (and inputs) are quantized by default
QUANT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a bit width (an int from 2 to 16) and return it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(
            f"{what} must be an integer from 2 to 16, got {bits!r}; "
            "use 8, 4, 3 or 2 (leave the model unquantized for full precision)"
        )
    return bits


def qmax(bits: int) -> int:
    """Largest symmetric code ``2**(bits-1) - 1``."""
    return 2 ** (bits - 1) - 1
