"""Research protocols. Importing this package registers every method."""

from . import anytime, d2sparse, train  # noqa: F401
from . import lottery  # noqa: F401
from . import compress_transfer  # noqa: F401
from .registry import Method, get_method, list_methods, register_method

__all__ = ["Method", "get_method", "list_methods", "register_method"]
