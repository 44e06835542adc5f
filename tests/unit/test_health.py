"""Readiness (issue 37): ``/health`` says ``loading``, ``warming`` or ``ok``;
``/health/ready`` answers 503 until the start-up model is loaded and warm;
``/health/live`` answers while the process serves. The fake engine's gates hold
a load in each phase, so each state is looked at, not raced."""

from __future__ import annotations

import httpx
import pytest

from mlxhost.api.app import create_app
from mlxhost.cli.common import CommandError
from mlxhost.cli.ps import describe, wait_until_ready
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.settings.table import Settings
from mlxhost.testing.live import live_server, wait_until
from mlxhost.testing.server import mlxhost_ready


class Probe:
    """What ``mlxhost_ready`` reads of a ``ServerProcess``."""

    def __init__(self, url: str, wait_for_model: bool = True) -> None:
        self.url = url
        self.wait_for_model = wait_for_model


@pytest.fixture
def held(fake_plugin):
    """The fake engine's load and warm-up held until the test opens them."""
    fake_plugin.load_gate.clear()
    fake_plugin.warm_gate.clear()
    yield fake_plugin
    fake_plugin.load_gate.set()
    fake_plugin.warm_gate.set()


def serve(fake_plugin, **settings):
    return live_server(create_app(Settings(**settings), make_plugin_manager(extra=[fake_plugin])))


def test_loading_then_warming_then_ready(held, fake_models):
    with serve(held, model=fake_models[0], extra_models=fake_models) as url:
        wait_until(held.loading.is_set, what="the start-up load")
        health = httpx.get(f"{url}/health").json()
        assert (health["status"], health["ready"], health["model"]) == ("loading", False, None)
        assert health["loading"] and health["warming"] is None
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        assert httpx.get(f"{url}/health/live").status_code == 200
        assert mlxhost_ready(Probe(url)) is False
        assert mlxhost_ready(Probe(url, wait_for_model=False)) is True

        held.load_gate.set()
        wait_until(held.warming.is_set, what="the warm-up")
        health = httpx.get(f"{url}/health").json()
        assert (health["status"], health["ready"], health["model"]) == ("warming", False, None)
        assert health["warming"] and health["loading"] is None
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "warming"
        assert mlxhost_ready(Probe(url)) is False
        assert ("warming up", f"{health['warming']} (compiling kernels, measuring batch sizes)") in describe(
            url, health, None
        )

        held.warm_gate.set()
        wait_until(lambda: httpx.get(f"{url}/health/ready").status_code == 200, what="ready")
        health = httpx.get(f"{url}/health").json()
        assert (health["status"], health["ready"]) == ("ok", True)
        assert health["model"] and health["loading"] is None and health["warming"] is None
        assert mlxhost_ready(Probe(url)) is True
        assert wait_until_ready(url, 5)["model"] == health["model"]


def test_ps_wait_returns_once_ready(held, fake_models):
    import threading

    with serve(held, model=fake_models[0], extra_models=fake_models) as url:
        result: dict = {}
        waiter = threading.Thread(target=lambda: result.update(wait_until_ready(url, 60, poll=0.01)))
        waiter.start()
        wait_until(held.loading.is_set, what="the start-up load")
        assert waiter.is_alive()  # not ready: still waiting
        held.load_gate.set()
        held.warm_gate.set()
        waiter.join(30)
        assert result["ready"] is True and result["status"] == "ok"


def test_without_a_start_up_model_ready_at_once(fake_plugin, fake_models):
    with serve(fake_plugin, extra_models=fake_models) as url:
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "model": None, "last_error": None}
        assert httpx.get(f"{url}/health").json()["ready"] is True


def test_a_failed_start_up_load_is_not_ready_until_a_load_succeeds(fake_plugin, fake_models):
    fake_plugin.fail_load = "weights are corrupt"
    with serve(fake_plugin, model=fake_models[0], extra_models=fake_models) as url:
        wait_until(lambda: httpx.get(f"{url}/health").json()["last_error"], what="the failed load")
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503
        assert "failed to load" in ready.json()["reason"] and "corrupt" in ready.json()["reason"]
        with pytest.raises(RuntimeError, match="corrupt"):
            mlxhost_ready(Probe(url))
        with pytest.raises(CommandError, match="corrupt"):
            wait_until_ready(url, 5)
        fake_plugin.fail_load = None
        chat = {"model": fake_models[0], "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=30).status_code == 200
        assert httpx.get(f"{url}/health/ready").status_code == 200


def test_probes_need_no_api_key(make_client):
    with make_client(api_key="secret") as client:
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 200
        assert client.get("/v1/models").status_code == 401
