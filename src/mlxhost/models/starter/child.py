"""Building a starter model in a child process.

The build converts a GGUF with transformers, which needs torch; a serving
process hides torch (``mlxhost.cli.lean_imports``) to start fast, so it cannot
build in-process. It runs ``python -m mlxhost.models.starter NAME`` instead and
passes each line the child prints (download, conversion stages with their
seconds) to ``log`` as it comes.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


class StarterBuildFailed(RuntimeError):
    """The child that builds a starter model failed; the message ends with its last lines."""


def builder_command(name: str) -> list[str]:
    # -u: the child's lines reach us as they are printed, not at exit.
    return [sys.executable, "-u", "-m", "mlxhost.models.starter", name]


def ensure_model_in_child(name: str, log: Callable[[str], object]) -> Path:
    """The built folder of starter model ``name``; built by a child process if missing."""
    from mlxhost.models.starter.builder import TEST_MODELS, is_finished, models_cache_dir

    folder = models_cache_dir() / TEST_MODELS[name].folder_name
    if is_finished(folder):
        return folder
    tail: collections.deque[str] = collections.deque(maxlen=20)
    # The child inherits the environment (MLXHOST_TEST_MODELS, pip's settings),
    # not this process's hidden torch.
    with subprocess.Popen(
        builder_command(name),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                log(line)
        code = child.wait()
    if code != 0:
        raise StarterBuildFailed(
            f"building the starter model {name!r} failed (exit status {code}): " + " | ".join(tail)
        )
    if not is_finished(folder):
        raise StarterBuildFailed(f"the starter model build left no finished folder at {folder}")
    return folder
