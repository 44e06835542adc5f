"""The status and playground page (mlxhost.api.ui) as HTTP sees it: files, headers,
API-key rules, ``--no-ui``, and the /health figures it shows. The page itself
runs in a real browser in tests/integration/test_everyday.py."""

from __future__ import annotations

import re

from mlxhost.api.ui import STATIC
from mlxhost.testing.http import chat


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # Only our own files: the page works offline and nothing else may load.
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert "<title>mlxhost</title>" in html
    for asset in ("/ui/app.js", "/ui/style.css"):
        assert asset in html
        response = client.get(asset)
        assert response.status_code == 200 and response.content == (STATIC / asset[4:]).read_bytes()
    assert client.get("/ui/../app.py").status_code == 404
    assert client.get("/ui/missing.js").status_code == 404


def test_the_page_loads_nothing_from_elsewhere():
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(?:src|href)=[\"']https?://", text), path
        assert "@import" not in text and "//cdn" not in text, path


def test_the_page_is_not_in_the_api_schema(client):
    paths = client.get("/schema/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)


def test_with_an_api_key_the_page_loads_and_its_api_calls_need_the_key(make_client, fake_models):
    with make_client(api_key="s3cret") as client:
        assert client.get("/").status_code == 200
        assert client.get("/ui/app.js").status_code == 200
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models").status_code == 401
        assert chat(client, fake_models[0]).status_code == 401
        key = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=key).status_code == 200
    # The page's own JS sends the key the user typed as a bearer token.
    assert '"Bearer " + key' in (STATIC / "app.js").read_text()


def test_no_ui_turns_the_page_off(make_client):
    with make_client(ui=False) as client:
        assert client.get("/").status_code == 404
        assert client.get("/ui/app.js").status_code == 404


def test_health_reports_uptime_and_memory(client):
    body = client.get("/health").json()
    assert body["uptime_s"] >= 0
    process = body["memory"]["process"]
    assert process["rss_peak"] > 0
    assert 0 < process["rss"] <= process["rss_peak"] * 1.01
