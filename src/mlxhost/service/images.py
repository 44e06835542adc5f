"""Image inputs: data URIs and http(s) URLs, fetched safely and decoded with Pillow.

Every failure raises ``InvalidRequest`` naming the content part, before the
generation lock is taken.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes, urljoin, urlsplit

import attrs

from mlxhost.core.errors import InvalidRequest

SUPPORTED_FORMATS = {"PNG", "JPEG", "WEBP", "GIF"}


@attrs.frozen
class ImagePolicy:
    max_bytes: int = 20 * 1024 * 1024
    # Decoded images larger than this are scaled down (keeping the aspect ratio).
    max_pixels: int = 1792 * 1792
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    max_redirects: int = 3
    # Networks allowed even though they are not public (e.g. "127.0.0.1/32" for tests).
    allow_networks: tuple[str, ...] = ()


@attrs.frozen
class DecodedImage:
    image: object  # PIL.Image.Image, RGB
    digest: str  # sha256 of the decoded pixels' source bytes, for cache keys
    where: str


def parse_data_uri(url: str, where: str) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URI."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:"):
        raise InvalidRequest(f"{where}: malformed data URI (expected 'data:<type>;base64,<data>').", param=where)
    media = header[len("data:") :]
    if not media.split(";")[0].startswith("image/"):
        raise InvalidRequest(f"{where}: data URI is not an image ('{media.split(';')[0] or 'no type'}').", param=where)
    if media.endswith(";base64"):
        try:
            return base64.b64decode(payload.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{where}: data URI has invalid base64 data.", param=where) from None
    return unquote_to_bytes(payload)


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_address(address: str, allow_networks: Iterable[str]) -> bool:
    """True if fetching from ``address`` is allowed: public, or inside the allow-list."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if any(ip in ipaddress.ip_network(net, strict=False) for net in allow_networks):
        return True
    return _is_public(ip)


async def resolve_host(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def check_url(url: str, policy: ImagePolicy, where: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest(
            f"{where}: unsupported URL scheme '{parts.scheme or '(none)'}' (use data:, http: or https:).",
            param=where,
        )
    if not parts.hostname:
        raise InvalidRequest(f"{where}: URL has no host.", param=where)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await resolve_host(parts.hostname, port)
    except OSError:
        raise InvalidRequest(f"{where}: could not resolve host '{parts.hostname}'.", param=where) from None
    refused = [a for a in addresses if not check_address(a, policy.allow_networks)]
    if refused or not addresses:
        raise InvalidRequest(
            f"{where}: refusing to fetch from non-public address {', '.join(refused)} "
            f"('{parts.hostname}'). Allow it with --allow-image-network.",
            param=where,
        )


async def fetch_url(url: str, policy: ImagePolicy, where: str) -> bytes:
    """GET an image URL: each redirect hop is checked, the size capped, timeouts enforced.

    The check resolves the host before connecting; a DNS answer that changes in
    between (rebinding) is a residual risk accepted for a loopback-bound server.
    """
    import httpx

    timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for _hop in range(policy.max_redirects + 1):
            await check_url(url, policy, where)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code >= 400:
                        raise InvalidRequest(
                            f"{where}: fetching the image failed with HTTP {response.status_code}.",
                            param=where,
                        )
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                        raise _too_big(where, policy)
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > policy.max_bytes:
                            raise _too_big(where, policy)
                    return bytes(body)
            except httpx.TimeoutException:
                raise InvalidRequest(f"{where}: fetching the image timed out.", param=where) from None
            except httpx.HTTPError as exc:
                raise InvalidRequest(f"{where}: fetching the image failed: {exc}.", param=where) from None
        raise InvalidRequest(f"{where}: too many redirects (more than {policy.max_redirects}).", param=where)


def _too_big(where: str, policy: ImagePolicy) -> InvalidRequest:
    limit = policy.max_bytes
    size = f"{limit / (1024 * 1024):g} MB" if limit >= 1024 * 1024 else f"{limit} bytes"
    return InvalidRequest(f"{where}: image is larger than {size}.", param=where)


def decode_image(data: bytes, policy: ImagePolicy, where: str) -> DecodedImage:
    """Pillow-decode (first frame of a GIF), convert to RGB, bound the pixel count."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > policy.max_bytes:
        raise _too_big(where, policy)
    try:
        opened = Image.open(io.BytesIO(data))
        if opened.format not in SUPPORTED_FORMATS:
            raise InvalidRequest(
                f"{where}: unsupported image format {opened.format} (use PNG, JPEG, WebP or GIF).",
                param=where,
            )
        opened.seek(0)
        image = opened.convert("RGB")
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest(f"{where}: the data is not a readable image.", param=where) from None
    if image.width * image.height > policy.max_pixels:
        scale = (policy.max_pixels / (image.width * image.height)) ** 0.5
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    return DecodedImage(image=image, digest=hashlib.sha256(data).hexdigest(), where=where)


async def load_image(url: str, policy: ImagePolicy, where: str) -> DecodedImage:
    if url.startswith("data:"):
        data = parse_data_uri(url, where)
    else:
        data = await fetch_url(url, policy, where)
    return decode_image(data, policy, where)
