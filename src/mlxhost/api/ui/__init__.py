"""The status and playground page at ``GET /`` (``--no-ui`` turns it off).

Three static files shipped inside the package (``static/``: no build step, no
CDN, works offline). The page holds no data: it reads ``/health`` and
``/v1/models`` and chats through ``/v1/chat/completions`` from the browser, so
the API key rules are the API's own: the files load without a key, and with
``--api-key`` the page sends the key its user types (kept in the browser's
localStorage) on every API call. See docs/ui.md.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

STATIC = Path(__file__).parent / "static"
# Only our own files; images the user attaches are data: URLs.
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@get("/", include_in_schema=False, sync_to_thread=False)
def index() -> Response[bytes]:
    return Response(
        (STATIC / "index.html").read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
    )


def routes() -> list[ControllerRouterHandler]:
    return [
        index,
        create_static_files_router(
            path="/ui", directories=[STATIC], include_in_schema=False,
            cache_control=CacheControlHeader(no_cache=True), name="ui",
        ),
    ]


def is_public(path: str) -> bool:
    """A path of the page itself (no API key needed)."""
    return path == "/" or path.startswith("/ui/")
