"""Faster MLX on Linux CPU: preload OpenBLAS in place of mlx-cpu's reference BLAS.

``mlx-cpu`` ships a reference BLAS (fp32 GEMM 3-4 GFLOP/s); Debian's
``libopenblas0-pthread`` exports the same ``cblas_*`` symbols and, preloaded,
reaches 55-68 GFLOP/s. The dynamic linker reads LD_PRELOAD only at process
start, so the CLI re-executes itself once with it set. ``MLXHOST_OPENBLAS`` and
``MLXHOST_OPENBLAS_PATH`` are declared with the other settings in settings/table.py
(``openblas``, ``openblas_path``) and read here through that table.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mlxhost.settings.table import env_value

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib64/libopenblas.so.0",
)
_MARKER = "MLXHOST_BLAS_REEXEC"


def find_openblas() -> str | None:
    for candidate in OPENBLAS_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return None


def wanted(
    env: Mapping[str, str], *, enabled: bool | None = None, path: str | None = None
) -> str | None:
    """The library to preload, or None (not Linux, disabled, absent or already there).

    ``enabled`` and ``path`` (the CLI's flags) default to the settings' variables in ``env``.
    """
    if not sys.platform.startswith("linux"):
        return None
    if not (env_value("openblas", env) if enabled is None else enabled):
        return None
    library = path or env_value("openblas_path", env) or find_openblas()
    if library is None or library in env.get("LD_PRELOAD", "") or env.get(_MARKER):
        return None
    return library


def preload_env(
    env: Mapping[str, str], *, enabled: bool | None = None, path: str | None = None
) -> dict[str, str]:
    """A copy of ``env`` with OpenBLAS preloaded when it helps (for subprocesses too)."""
    out = dict(env)
    library = wanted(env, enabled=enabled, path=path)
    if library:
        out["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD")) if p)
        out[_MARKER] = "1"
    return out


def reexec_with_openblas(*, enabled: bool | None = None, path: str | None = None) -> None:
    """Re-execute this process with OpenBLAS preloaded, once; no-op when not useful.

    The flags stay in argv, so the re-executed process sees the same settings.
    """
    if wanted(os.environ, enabled=enabled, path=path) is None:
        return
    env = preload_env(os.environ, enabled=enabled, path=path)
    # Re-run as a module: running cli/main.py as a script would put its folder first on
    # sys.path, where a module of the folder can shadow a standard library module.
    os.execve(sys.executable, [sys.executable, "-m", "mlxhost.cli.main", *sys.argv[1:]], env)
