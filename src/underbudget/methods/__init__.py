"""Research protocols. Importing this package registers every method."""

from . import anytime, compress_transfer, d2sparse, lottery, train  # noqa: F401
from .registry import Method, get_method, list_methods, register_method

__all__ = ["Method", "get_method", "list_methods", "register_method"]
