"""underbudget: learning under constraints (sparsity, data, time, precision) in PyTorch."""

__version__ = "0.1.0"

__all__ = ["__version__"]
