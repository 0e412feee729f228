"""Stages that compose with any method: quantize a finished model, transfer it, report both.

:mod:`.plan` says which stages a config asks for and where each lives (a directory that
depends only on what the stage computes, so finished stages are reused); :mod:`.weights`
finds the deployed model of any finished stage; :mod:`.quantize` and :mod:`.transfer` are
the stages; :mod:`.report` writes the experiment's report. The experiment compiler
(:mod:`underbudget.experiment.compose`) turns a plan into graph tasks.
"""

from .plan import StagePlan, composes, plan_stages, source_config, transfer_settings
from .quantize import run_quantize
from .report import write_compose_report
from .transfer import run_transfer
from .weights import Deployed, deployed, deployed_bytes

__all__ = ["Deployed", "StagePlan", "composes", "deployed", "deployed_bytes", "plan_stages",
           "run_quantize", "run_transfer", "source_config", "transfer_settings",
           "write_compose_report"]
