"""The callback protocol the trainer calls (defined in :mod:`underbudget.callbacks`)."""

from ..callbacks import Callback

__all__ = ["Callback"]
