"""Shared test fixtures: a temporary run root and a seeded CPU setting."""

from __future__ import annotations

import os

import pytest
import torch

# Tests use tiny tensors, where a second thread costs more in synchronisation than it gains
# (and thrashes when the machine is busy).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded_cpu(monkeypatch, tmp_path_factory):
    """Seed torch for every test and keep data/run roots out of the user's home."""
    torch.manual_seed(0)
    monkeypatch.setenv("UNDERBUDGET_RUNS", str(tmp_path_factory.mktemp("runs")))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield


FASHION_DIR = "/usr/share/datasets/fashion-mnist"
has_fashion = pytest.mark.skipif(
    not os.path.isdir(FASHION_DIR), reason="Debian package dataset-fashion-mnist not installed"
)
