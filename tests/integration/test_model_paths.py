"""A request never chooses a filesystem path (issue: hardening).

Only registered models, cached repos a family plugin knows, folders named at
start-up and subfolders of ``--models-dir`` may be served; every other string
is a 404 ``model_not_found``, and the loaded model stays loaded.
"""

from __future__ import annotations

import shutil

import httpx
import pytest

from mlxhost.models.starter.builder import TEST_MODELS, ensure_test_model
from mlxhost.testing.vlm_models import ensure_tiny_vlm

SMOL = TEST_MODELS["smollm2"].repo_id  # the loaded model that must stay loaded


def ask(url: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        timeout=300,
    )


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(ensure_tiny_vlm("gemma3"), root / "tiny-gemma")
    # A link out of the models dir, to a real model folder: never followed.
    (root / "escape").symlink_to(ensure_test_model("gemma"))
    return root


@pytest.fixture(scope="module")
def server(start_server, models_dir):
    with start_server("--model", SMOL, "--models-dir", str(models_dir)) as server:
        yield server


OUTSIDE = [
    "~",
    "~root/x",
    "/etc",
    "../..",
    "%2e%2e/",
    "..%2f..%2fetc",
    "./escape",
    "escape",
    "tiny-gemma/../escape",
    "foo\x00bar",
]


@pytest.mark.parametrize("name", OUTSIDE)
def test_paths_are_not_models(server, name):
    response = ask(server.url, name)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "model_not_found"
    health = server.health()
    assert health["model"] == SMOL and health["swaps"] == 0


def test_a_real_model_folder_outside_the_roots_is_404(server):
    folder = str(ensure_test_model("gemma"))
    assert ask(server.url, folder).status_code == 404
    assert httpx.get(f"{server.url}/v1/models/{folder.lstrip('/')}").status_code == 404
    assert server.health()["model"] == SMOL and server.health()["swaps"] == 0


@pytest.mark.parametrize("path", ["~soJI", "%2e%2e%2f%2e%2e%2fetc", "..%2Fetc", "escape", "/etc/passwd"])
def test_model_lookup_by_path_is_404_never_500(server, path):
    response = httpx.get(f"{server.url}/v1/models/{path}")
    assert response.status_code == 404, response.text


def test_a_folder_under_the_models_dir_is_listed_and_served(server):
    listed = {m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert "tiny-gemma" in listed and "escape" not in listed
    assert httpx.get(f"{server.url}/v1/models/tiny-gemma").json()["family"] == "gemma"
    response = ask(server.url, "tiny-gemma")
    assert response.status_code == 200, response.text
    assert server.health()["model"] == "tiny-gemma"


def test_allow_model_paths_serves_any_folder(start_server, models_dir):
    folder = str(models_dir / "tiny-gemma")
    with start_server("--allow-model-paths", wait_for_model=False) as server:
        response = ask(server.url, folder)
        assert response.status_code == 200, response.text
