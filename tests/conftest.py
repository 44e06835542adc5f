"""Shared fixtures. The environment is pinned before anything imports huggingface_hub:
no test may reach the hub, and the Hugging Face cache is a temporary folder."""

from __future__ import annotations

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="mlxhost-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_HUB_OFFLINE"] = "1"
# No user config file (~/.config/mlxhost/config.toml) reaches a test.
os.environ["XDG_CONFIG_HOME"] = os.path.join(_HF_HOME, "xdg-config")
os.environ.pop("MLXHOST_CONFIG", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_addoption(parser):
    parser.addoption(
        "--newcomer", action="store_true",
        help="run tests/newcomer: the README's set-up in a fresh clone and an empty HOME "
        "(minutes: installs .venv and builds the starter model); .ci/run runs it",
    )


def pytest_ignore_collect(collection_path, config):
    """tests/newcomer runs only when asked (``--newcomer``), never in the default run."""
    if collection_path.name == "newcomer" and not config.getoption("--newcomer"):
        return True
    return None
