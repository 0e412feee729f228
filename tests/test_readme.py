"""The README stays true: its Python example runs, its commands name real things."""

from __future__ import annotations

import re
from pathlib import Path

from underbudget.config import list_presets

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    masks = namespace["masks"]
    assert abs(masks.density() - 0.2) < 1e-4
    assert (tmp_path / "masks.safetensors").exists()


def test_named_presets_exist():
    text = README.read_text()
    named = set(re.findall(r"`((?:app|train|tiny|lottery|transfer|d2sparse)-[\w-]*|tiny)`", text))
    missing = sorted(n for n in named if n not in list_presets() and not n.endswith("-"))
    assert not missing, missing


def test_setup_commands_are_in_the_makefile():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    makefile = (README.parent / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (README.parent / ".ci" / "run").read_text()
