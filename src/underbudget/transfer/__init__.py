"""Transfer building blocks: visual prompts, label mapping, probe / fine-tune / prompt wrappers."""

from underbudget.transfer.heads import FineTune, LinearProbe, VisualPrompt, new_head
from underbudget.transfer.label_mapping import (
    LabelMapper,
    count_matrix,
    greedy_mapping,
    hungarian_mapping,
    random_mapping,
)
from underbudget.transfer.mapping_callback import LabelMappingCallback
from underbudget.transfer.prompts import ExpansivePrompt, PadPrompt, PatchPrompt, ShrinkPadPrompt

__all__ = [
    "ExpansivePrompt",
    "FineTune",
    "LabelMapper",
    "LabelMappingCallback",
    "LinearProbe",
    "PadPrompt",
    "PatchPrompt",
    "ShrinkPadPrompt",
    "VisualPrompt",
    "count_matrix",
    "greedy_mapping",
    "hungarian_mapping",
    "new_head",
    "random_mapping",
]
