"""Developer sessions: `nox -s tests lint`. CI runs scripts/test.sh (the same pytest)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint"]
PLUGINS = ["-e", "plugins/mlxhost_gemma", "-e", "plugins/mlxhost_qwen"]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The whole suite, in the project's .venv (built by scripts/setup.sh)."""
    session.run("bash", "scripts/test.sh", *session.posargs, external=True)


@nox.session
def unit(session: nox.Session) -> None:
    """Fast tests only: no model, no MLX work."""
    session.install("-e", ".[test]", *PLUGINS)
    session.run("pytest", "tests/unit", "plugins", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff, mypy over src/ and plugins/*/src, and the layers contract (lint-imports),
    in the project's .venv, where MLX is."""
    session.run(".venv/bin/ruff", "check", "src", "plugins", "tests", "bench", external=True)
    session.run(".venv/bin/python", "-m", "mypy", external=True)
    session.run(".venv/bin/lint-imports", external=True)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Benchmarks (writes docs/benchmarks.md)."""
    session.run(".venv/bin/python", "-m", "bench", *session.posargs, external=True)
