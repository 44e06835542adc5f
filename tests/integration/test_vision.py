"""Images through a real `mlxhost serve` to the tiny random Gemma 3 and Qwen3-VL models.

Their text is gibberish; what is checked is the pipeline: decoding, placement,
expansion to the right number of image tokens (usage.prompt_tokens), the vision
tower (different images give different greedy outputs), and data URI vs URL.
"""

from __future__ import annotations

import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from PIL import Image

from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.vlm_models import TINY_VLMS, expected_image_tokens

QWEN = TEST_MODELS["qwen"].repo_id


def png(color, size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


IMAGES = {
    "/red.png": png("red"),
    "/blue.png": png("blue"),
    "/small.png": png("red", (16, 16)),
    "/wide.png": png("green", (200, 150)),
}


@pytest.fixture(scope="module")
def image_host():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path in IMAGES:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(IMAGES[self.path])
            elif self.path == "/notimage":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"<html>nope</html>")
            else:
                self.send_response(404)
                self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module", params=sorted(TINY_VLMS))
def vlm(request, start_server):
    name = request.param
    with start_server("--model", TINY_VLMS[name], "--allow-image-network", "127.0.0.1/32") as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=300)
        yield name, TINY_VLMS[name], client, server


def ask(client, model, *parts, max_tokens=6):
    content = [{"type": "text", "text": "Describe the image."}]
    for part in parts:
        content.append({"type": "image_url", "image_url": {"url": part}})
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0
    )


def test_image_tokens_are_expanded(vlm, image_host):
    name, model, client, _ = vlm
    none = ask(client, model).usage.prompt_tokens
    red = ask(client, model, data_uri(IMAGES["/red.png"])).usage.prompt_tokens
    small = ask(client, model, f"{image_host}/small.png").usage.prompt_tokens
    wide = ask(client, model, f"{image_host}/wide.png").usage.prompt_tokens
    assert red - none > expected_image_tokens(name, 64, 64)  # the tokens plus their markers
    # Same prompt, other image sizes: the counts differ exactly as the processor expands them.
    assert wide - small == expected_image_tokens(name, 200, 150) - expected_image_tokens(name, 16, 16)
    assert red - small == expected_image_tokens(name, 64, 64) - expected_image_tokens(name, 16, 16)
    two = ask(client, model, data_uri(IMAGES["/red.png"]), f"{image_host}/wide.png").usage.prompt_tokens
    assert two - red >= expected_image_tokens(name, 200, 150)


def test_different_images_give_different_outputs(vlm):
    _, model, client, _ = vlm
    red = ask(client, model, data_uri(IMAGES["/red.png"])).choices[0].message.content
    blue = ask(client, model, data_uri(IMAGES["/blue.png"])).choices[0].message.content
    again = ask(client, model, data_uri(IMAGES["/red.png"])).choices[0].message.content
    assert red != blue
    assert red == again


def test_data_uri_and_url_give_identical_output(vlm, image_host):
    _, model, client, _ = vlm
    by_data = ask(client, model, data_uri(IMAGES["/blue.png"])).choices[0].message.content
    by_url = ask(client, model, f"{image_host}/blue.png").choices[0].message.content
    assert by_data == by_url


def test_images_across_messages_and_streaming(vlm, image_host):
    _, model, client, _ = vlm
    red = {"type": "image_url", "image_url": {"url": data_uri(IMAGES["/red.png"])}}
    blue = {"type": "image_url", "image_url": {"url": f"{image_host}/blue.png"}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "First:"}, red]},
        {"role": "assistant", "content": "Seen."},
        {"role": "user", "content": [{"type": "text", "text": "Second:"}, blue, red]},
    ]
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens > 3 * expected_image_tokens("gemma3" if "gemma" in model else "qwen3_vl", 64, 64)
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


BAD_INPUTS = [
    ("data:image/png;base64", "malformed data URI"),
    ("data:image/png;base64,%%%notbase64", "invalid base64"),
    (data_uri(b"this is not an image"), "not a readable image"),
    ("file:///etc/passwd", "unsupported URL scheme"),
    ("ftp://example.com/cat.png", "unsupported URL scheme"),
    ("http://10.0.0.1/cat.png", "non-public address"),
    ("http://169.254.169.254/latest/meta-data", "non-public address"),
    ("{host}/missing.png", "HTTP 404"),
    ("{host}/notimage", "not a readable image"),
]


@pytest.mark.parametrize(("url", "needle"), BAD_INPUTS)
def test_bad_image_inputs_are_400_and_the_server_carries_on(vlm, image_host, url, needle):
    _, model, client, _ = vlm
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, model, url.format(host=image_host))
    error = caught.value.body
    assert needle in error["message"]
    assert error["param"] == "messages[0].content[1]"
    assert ask(client, model, data_uri(IMAGES["/red.png"]), max_tokens=2).choices[0].finish_reason


def test_oversized_image_is_rejected(start_server, image_host):
    with start_server("--model", TINY_VLMS["qwen3_vl"], "--max-image-bytes", "100") as server:
        body = {
            "model": TINY_VLMS["qwen3_vl"],
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_uri(IMAGES["/wide.png"])}}]}],
            "max_tokens": 2,
        }
        response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400 and "larger than" in response.json()["error"]["message"]


def test_text_only_model_rejects_an_image_without_swapping(vlm):
    _, model, client, server = vlm
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, QWEN, data_uri(IMAGES["/red.png"]))
    assert "does not accept images" in caught.value.body["message"]
    assert server.health()["model"] == model


def test_models_report_capabilities(vlm):
    _, model, client, _ = vlm
    entries = {m.id: m.model_extra for m in client.models.list().data}
    assert "vision" in entries[model]["capabilities"]
    assert "vision" not in entries[QWEN]["capabilities"]
    assert "vision" in entries["gemma"]["capabilities"] and "tools" in entries["qwen"]["capabilities"]
