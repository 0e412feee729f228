"""underbudget: learning under constraints (sparsity, data, time, precision) in PyTorch.

Importing the package registers every method (its config section, run and report), so a
config naming any method loads from :func:`underbudget.config.load_config` on its own.
"""

from . import methods  # noqa: E402, F401  (registers the methods' configs and reports)
from .version import __version__

__all__ = ["__version__"]
