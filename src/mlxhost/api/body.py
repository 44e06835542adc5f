"""Reading a request's JSON body, the same way for every wire format."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException

from mlxhost.core.errors import InvalidRequest
from mlxhost.core.units import duration_seconds


async def read_json(request: Request) -> Any:
    """The parsed body; a body that is not JSON is a 400 in the endpoint's own
    error shape (``InvalidRequest``), while Litestar's own HTTP errors (the
    413 of the body size cap) pass through."""
    try:
        return await request.json()
    except HTTPException:
        raise
    except Exception:
        raise InvalidRequest("The request body is not valid JSON.") from None


def keep_alive_seconds(body: dict[str, Any]) -> float | None:
    """Ollama's ``keep_alive`` ("5m", seconds, negative: forever) as seconds
    (None: not given); a malformed value is a 400 naming the field."""
    value = body.get("keep_alive")
    if value is None:
        return None
    try:
        return duration_seconds(value)
    except ValueError as exc:
        raise InvalidRequest(f"'keep_alive': {exc}", param="keep_alive") from None
