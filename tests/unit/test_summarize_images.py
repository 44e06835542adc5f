"""Images travel with their messages through summarization.

An image in an earlier system message that is kept must stay in the prompt;
one in an older message that is summarized away must go; the last turn's image
stays. (The old code matched images back by counting from the end and picked
the dropped image instead of the kept system one.)
"""

from __future__ import annotations

import base64
import hashlib
import io

from litestar.testing import TestClient

from mlxhost.api.app import create_app
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.settings.table import Settings
from mlxhost.testing.fake_engine import FakeEnginePlugin, make_fake_model


def png(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, format="PNG")
    return out.getvalue()


def image_part(data: bytes) -> dict:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def test_kept_system_image_stays_and_summarized_image_goes(tmp_path):
    kept_system, dropped, last = png((255, 0, 0)), png((0, 255, 0)), png((0, 0, 255))
    folder = make_fake_model(tmp_path / "fake-vision", context_window=1000, vision=True)
    plugin = FakeEnginePlugin(reply="ok")
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}, image_part(kept_system)]},
        {"role": "user", "content": [{"type": "text", "text": "Look at this."}, image_part(dropped)]},
        {"role": "assistant", "content": "x" * 450},
        {"role": "user", "content": "y" * 450},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "One."},
        {"role": "assistant", "content": "Two."},
        {"role": "user", "content": "Three."},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, image_part(last)]},
    ]
    app = create_app(Settings(extra_models=[str(folder)]), make_plugin_manager(extra=[plugin]))
    with TestClient(app) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": str(folder.resolve()), "messages": messages, "max_tokens": 8},
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-mlxhost-context"] == "summarized"
    final = plugin.prompts[-1]
    digests = [image.digest for image in final.images]
    assert digests == [hashlib.sha256(kept_system).hexdigest(), hashlib.sha256(last).hexdigest()]
    assert final.text.count("[image]") == 2
    assert "y" * 450 not in final.text  # the older turns really were summarized
