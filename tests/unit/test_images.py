"""Image inputs: data URIs, address policy, fetching (loopback test server), decoding."""

from __future__ import annotations

import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mlxhost.core.errors import InvalidRequest
from mlxhost.service import images
from mlxhost.service.images import (
    ImagePolicy,
    check_address,
    decode_image,
    load_image,
    parse_data_uri,
)


def png_bytes(color=(255, 0, 0), size=(8, 8), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(data: bytes, media="image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def test_data_uri_round_trip():
    assert parse_data_uri(data_uri(b"abc"), "p") == b"abc"


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("data:image/png;base64", "malformed"),
        ("data:image/png;base64,@@@", "invalid base64"),
        ("data:text/plain;base64,aGk=", "not an image"),
    ],
)
def test_bad_data_uris(uri, needle):
    with pytest.raises(InvalidRequest, match=needle) as caught:
        parse_data_uri(uri, "messages[0].content[1]")
    assert caught.value.param == "messages[0].content[1]"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_decodes_supported_formats(fmt):
    decoded = decode_image(png_bytes(fmt=fmt), ImagePolicy(), "p")
    assert decoded.image.size == (8, 8) and decoded.image.mode == "RGB"


def test_not_an_image_and_oversized():
    with pytest.raises(InvalidRequest, match="not a readable image"):
        decode_image(b"hello world", ImagePolicy(), "p")
    with pytest.raises(InvalidRequest, match="larger than"):
        decode_image(png_bytes(), ImagePolicy(max_bytes=10), "p")


def test_large_images_are_scaled_down():
    decoded = decode_image(png_bytes(size=(400, 100)), ImagePolicy(max_pixels=100 * 25), "p")
    width, height = decoded.image.size
    assert width * height <= 2500 and abs(width / height - 4) < 0.2


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.1.1", False),
        ("172.16.0.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("0.0.0.0", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("2001:4860:4860::8888", True),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:8.8.8.8", True),
    ],
)
def test_address_policy(address, allowed):
    assert check_address(address, ()) is allowed


def test_allow_list_opens_a_network():
    assert check_address("127.0.0.1", ("127.0.0.0/8",))
    assert not check_address("10.0.0.1", ("127.0.0.0/8",))


async def test_dns_name_resolving_to_private_address_is_refused(monkeypatch):
    async def fake_resolve(host, port):
        return ["10.9.8.7"]

    monkeypatch.setattr(images, "resolve_host", fake_resolve)
    with pytest.raises(InvalidRequest, match="non-public address 10.9.8.7"):
        await load_image("http://innocent.example/cat.png", ImagePolicy(), "p")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/"])
async def test_unsupported_schemes(url):
    with pytest.raises(InvalidRequest, match="unsupported URL scheme"):
        await load_image(url, ImagePolicy(), "p")


@pytest.fixture(scope="module")
def image_server():
    """A loopback HTTP server with an image, redirects, errors and a slow path."""
    image = png_bytes()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path == "/cat.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)
            elif self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", "/cat.png")
                self.end_headers()
            elif self.path == "/to-private":
                self.send_response(302)
                self.send_header("Location", "http://10.0.0.1/cat.png")
                self.end_headers()
            elif self.path == "/loop":
                self.send_response(302)
                self.send_header("Location", "/loop")
                self.end_headers()
            elif self.path == "/slow":
                threading.Event().wait(3)
                self.send_response(200)
                self.end_headers()
            else:
                self.send_response(404)
                self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", image
    server.shutdown()


LOCAL = ImagePolicy(allow_networks=("127.0.0.1/32",), read_timeout=1.0)


async def test_loopback_is_refused_by_default(image_server):
    base, _ = image_server
    with pytest.raises(InvalidRequest, match="non-public address 127.0.0.1"):
        await load_image(f"{base}/cat.png", ImagePolicy(), "p")


async def test_fetch_with_allow_list_and_redirect(image_server):
    base, image = image_server
    direct = await load_image(f"{base}/cat.png", LOCAL, "p")
    hopped = await load_image(f"{base}/hop", LOCAL, "p")
    assert direct.digest == hopped.digest
    assert direct.image.tobytes() == decode_image(image, LOCAL, "p").image.tobytes()


async def test_redirect_to_private_address_is_refused(image_server):
    base, _ = image_server
    with pytest.raises(InvalidRequest, match="non-public address 10.0.0.1"):
        await load_image(f"{base}/to-private", LOCAL, "p")


async def test_fetch_errors_say_which(image_server):
    base, _ = image_server
    with pytest.raises(InvalidRequest, match="HTTP 404"):
        await load_image(f"{base}/missing.png", LOCAL, "p")
    with pytest.raises(InvalidRequest, match="too many redirects"):
        await load_image(f"{base}/loop", LOCAL, "p")
    with pytest.raises(InvalidRequest, match="timed out"):
        await load_image(f"{base}/slow", LOCAL, "p")
    with pytest.raises(InvalidRequest, match="larger than"):
        await load_image(f"{base}/cat.png", ImagePolicy(max_bytes=20, allow_networks=("127.0.0.1/32",)), "p")


def test_text_only_model_rejects_images_before_the_lock(client, fake_models, fake_plugin):
    part = {"type": "image_url", "image_url": {"url": data_uri(png_bytes())}}
    body = {"model": fake_models[0], "messages": [{"role": "user", "content": [part]}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "does not accept images" in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "messages[0].content[0]"
    assert fake_plugin.events == []  # the model was never even loaded
