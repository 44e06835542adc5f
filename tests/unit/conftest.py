from __future__ import annotations

import pytest
from litestar.testing import TestClient

from mlxhost.api.app import create_app
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.settings.table import Settings
from mlxhost.testing.fake_engine import FakeEnginePlugin, make_fake_model


@pytest.fixture
def fake_plugin() -> FakeEnginePlugin:
    return FakeEnginePlugin()


@pytest.fixture
def fake_models(tmp_path):
    return [
        str(make_fake_model(tmp_path / "fake-a")),
        str(make_fake_model(tmp_path / "fake-b", context_window=128)),
    ]


@pytest.fixture
def make_client(fake_plugin, fake_models):
    def make(**settings):
        settings.setdefault("extra_models", fake_models)
        pm = make_plugin_manager(extra=[fake_plugin])
        return TestClient(create_app(Settings(**settings), pm))

    return make


@pytest.fixture
def client(make_client):
    with make_client() as test_client:
        yield test_client
