"""A request for a model that is not on this machine must not cost the loaded one.

The server first locates (and, where allowed, downloads) the model asked for;
only then does it unload the current one. A registered model that is neither
cached nor downloadable is a 404 ``model_not_downloaded`` that says why and
what is available, and the loaded model stays loaded.
"""

from __future__ import annotations

import httpx
import pytest

from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.server import free_port

SMOL = TEST_MODELS["smollm2"].repo_id  # the fastest to load: this module starts two servers


def ask(server, model: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=300,
    )


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        # Online, but the hub is a closed local port: the download cannot start.
        (
            {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"},
            "could not be reached",
        ),
    ],
    ids=["offline", "hub-unreachable"],
)
def test_missing_model_is_404_and_the_loaded_model_stays(start_server, env, reason):
    with start_server("--model", SMOL, env=env) as server:
        assert ask(server, SMOL).status_code == 200
        for name in ("qwen", "gemma"):  # registered aliases, not downloaded here
            response = ask(server, name)
            assert response.status_code == 404, response.text
            error = response.json()["error"]
            assert error["code"] == "model_not_downloaded" and error["param"] == "model"
            assert "not in the local Hugging Face cache" in error["message"]
            assert reason in error["message"]
            assert SMOL in error["message"]  # what is available instead
            health = server.health()
            assert health["model"] == SMOL and health["swaps"] == 0
        # The model that was working answers without a reload.
        assert ask(server, SMOL).status_code == 200
        assert server.health()["swaps"] == 0
        assert server.log_tail(400).count(f"Model {SMOL} ready") == 1
