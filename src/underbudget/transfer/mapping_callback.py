"""Training callback that keeps a :class:`LabelMapper` up to date (FLM once, ILM every epoch)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

from underbudget.callbacks import Callback
from underbudget.data.augment import Augment
from underbudget.transfer.label_mapping import LabelMapper


def without_augmentation(loader: Any) -> Any:
    """``loader`` with its random augmentation (crops, flips) switched off.

    For the project's loaders (anything with an ``augment`` attribute holding an
    :class:`~underbudget.data.augment.Augment`) a shallow copy that keeps only the deterministic
    resize; any other iterable is returned as it is.
    """
    augment = getattr(loader, "augment", None)
    if not isinstance(augment, Augment) or not augment.random:
        return loader
    plain = copy.copy(loader)
    still = dataclasses.replace(augment, crop_padding=0, flip=False)
    plain.augment = still if still.resize is not None else None
    return plain


class LabelMappingCallback(Callback):
    """Recompute the label map at the start of each epoch as the mapper's mode prescribes.

    ``data``: labelled batches of TARGET training images in [0, 1] (re-iterable, e.g. a
    loader); default ``trainer.loader`` WITHOUT its random augmentation, since the counts
    behind FLM and ILM are taken on the unaugmented training images (as in ILM-VP); pass
    unaugmented ``data`` yourself for a loader of another kind. ``model``: what produces
    source logits; default ``trainer.model`` (a
    :class:`~underbudget.transfer.heads.VisualPrompt`, called through its ``source_logits``).
    Each update is logged as a ``label_mapping`` event.
    """

    name = "label_mapping"

    def __init__(self, mapper: LabelMapper, data: Iterable[Any] | None = None, model: Any = None):
        self.mapper = mapper
        self.data = data
        self.model = model

    def before_epoch(self, trainer: Any) -> None:
        if self.mapper.mode == "rlm" or (self.mapper.mode == "flm" and self.mapper.fitted):
            return
        model = self.model if self.model is not None else trainer.model
        data = self.data if self.data is not None else without_augmentation(trainer.loader)
        changed = self.mapper.update(model, data)
        trainer.log(
            "label_mapping",
            stage=getattr(trainer, "stage", 0),
            epoch=trainer.epoch,
            step=trainer.step,
            changed=changed,
            mapping=self.mapper.mapping.tolist(),
        )

    def weight_state(self) -> dict:
        """The mapping the prompt was trained with belongs to its weights."""
        return self.mapper.diagnostics()

    def load_weight_state(self, state: dict) -> None:
        if state:
            self.mapper.load_diagnostics(state)

    def state_dict(self) -> dict:
        return self.mapper.diagnostics()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.mapper.load_diagnostics(state)
