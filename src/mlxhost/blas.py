"""Faster MLX on Linux CPU: preload OpenBLAS in place of mlx-cpu's reference BLAS.

``mlx-cpu`` ships a reference BLAS (fp32 GEMM 3-4 GFLOP/s); Debian's
``libopenblas0-pthread`` exports the same ``cblas_*`` symbols and, preloaded,
reaches 55-68 GFLOP/s. The dynamic linker reads LD_PRELOAD only at process
start, so the CLI re-executes itself once with it set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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


def wanted(env: dict[str, str] | os._Environ) -> str | None:
    """The library to preload, or None (not Linux, disabled, absent or already there)."""
    if not sys.platform.startswith("linux") or env.get("MLXHOST_OPENBLAS", "1") == "0":
        return None
    library = env.get("MLXHOST_OPENBLAS_PATH") or find_openblas()
    if library is None or library in env.get("LD_PRELOAD", "") or env.get(_MARKER):
        return None
    return library


def preload_env(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """A copy of ``env`` with OpenBLAS preloaded when it helps (for subprocesses too)."""
    out = dict(env)
    library = wanted(env)
    if library:
        out["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD")) if p)
        out[_MARKER] = "1"
    return out


def reexec_with_openblas() -> None:
    """Re-execute this process with OpenBLAS preloaded, once; no-op when not useful."""
    if wanted(os.environ) is None:
        return
    env = preload_env(os.environ)
    # Re-run as a module: running cli.py as a script would put the package folder
    # on sys.path, where mlxhost/types.py shadows the standard library's types.
    os.execve(sys.executable, [sys.executable, "-m", "mlxhost.cli", *sys.argv[1:]], env)
