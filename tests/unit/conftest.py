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


@pytest.fixture(scope="session")
def harmony_encoding():
    """openai-harmony's gpt-oss encoding, its o200k_base vocabulary built once from
    PyPI (``mlxhost.testing.harmony_vocab``; the library would download it)."""
    import os

    # A test dependency (pyproject's test extra): missing, the tests fail, never skip.
    import openai_harmony as harmony

    from mlxhost.testing.harmony_vocab import ensure_o200k

    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(ensure_o200k())
    return harmony.load_harmony_encoding(harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
