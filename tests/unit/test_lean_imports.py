"""mlxhost.cli.lean_imports: serving processes never import torch."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_hidden_torch_is_invisible_to_transformers_and_mlx_lm():
    out = run(
        "from mlxhost.cli.lean_imports import hide_torch; print(hide_torch())\n"
        "import sys, mlx_lm.utils, transformers.utils as u\n"
        "print(u.is_torch_available(), 'torch' in sys.modules and sys.modules['torch'] is not None)"
    )
    assert out.splitlines() == ["True", "False False"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_hiding_after_torch_was_imported_changes_nothing():
    out = run("import torch\nfrom mlxhost.cli.lean_imports import hide_torch\nprint(hide_torch(), torch.ones(1).item())")
    assert out == "False 1.0"
