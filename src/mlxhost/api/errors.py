"""Exception handlers: every error leaves the server in the error shape of the
API the request spoke: OpenAI's by default, or the shape an adapter declares for
its path prefix. The app lists the adapters' shapes (:class:`ErrorShapes` on
``app.state``): nothing is registered as a side effect of importing an adapter."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, NotFoundException

from mlxhost.core.errors import (
    ClientDisconnected,
    ContextLengthExceeded,
    MlxhostError,
    error_type_of,
)

log = logging.getLogger(__name__)


@attrs.frozen
class ApiError:
    """One error, independent of any API's shape."""

    status: int
    message: str
    # OpenAI's error type ("invalid_request_error", "server_error") and code.
    type: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None
    # The numbers of a context overflow, for APIs that word it their own way.
    overflow: ContextLengthExceeded | None = None


# An API's error body for an ApiError.
ErrorShape = Callable[[ApiError], Any]


def openai_error_body(error: ApiError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


# An adapter's error shape for the requests under its path prefix (e.g. "/v1/messages").
PrefixShape = tuple[str, ErrorShape]


@attrs.frozen
class ErrorShapes:
    """The error shape of each API by path prefix; the longest prefix wins."""

    by_prefix: tuple[PrefixShape, ...] = attrs.field(
        default=(), converter=lambda shapes: tuple(sorted(shapes, key=lambda item: -len(item[0])))
    )

    def for_path(self, path: str) -> ErrorShape:
        for prefix, shape in self.by_prefix:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return shape
        return openai_error_body


def error_body(request: Request, error: ApiError) -> dict[str, Any]:
    # create_app puts the adapters' shapes on app.state; an app without them speaks OpenAI's.
    shapes: ErrorShapes = request.app.state.get("error_shapes") or ErrorShapes()
    return shapes.for_path(request.url.path)(error)


def respond(request: Request, error: ApiError) -> Response:
    body = error_body(request, error)
    return Response(content=body, status_code=error.status, headers=error.headers)


def message_of(body: dict[str, Any]) -> str | None:
    """The message an error body carries, in any of the shapes (Ollama's is a string)."""
    error = body.get("error")
    if isinstance(error, str):
        return error
    return error.get("message") if isinstance(error, dict) else None


def error_response(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An OpenAI-shaped error response (for code outside a request's handlers)."""
    error = ApiError(status, message, error_type, param, code, headers)
    return Response(content=openai_error_body(error), status_code=status, headers=headers)


def domain_error(exc: MlxhostError) -> ApiError:
    return ApiError(
        exc.status_code, exc.message, exc.error_type, exc.param, exc.code, exc.headers,
        overflow=exc if isinstance(exc, ContextLengthExceeded) else None,
    )


def log_client_error(request: Request, status: int, message: str) -> None:
    """Every 4xx in the log with its reason: one line, never the body."""
    log.warning("%s %s -> %d: %s", request.method, request.url.path, status, message)


def handle_domain_error(request: Request, exc: MlxhostError) -> Response:
    error = domain_error(exc)
    body = error_body(request, error)
    message = message_of(body) or exc.message  # the API's own wording, as the client reads it
    if exc.status_code >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, message)
    elif exc.status_code >= 400:
        log_client_error(request, exc.status_code, message)
    return Response(content=body, status_code=error.status, headers=error.headers)


def handle_http_error(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if isinstance(exc, NotFoundException):
        log_client_error(request, 404, "unknown path")
        return respond(
            request,
            ApiError(404, f"Unknown path: {request.url.path}", "invalid_request_error", code="not_found"),
        )
    if isinstance(exc, NotAuthorizedException):
        log_client_error(request, 401, exc.detail)
        return respond(request, ApiError(401, exc.detail, "invalid_request_error", code="invalid_api_key"))
    if 400 <= status < 500:
        log_client_error(request, status, str(exc.detail))
    return respond(request, ApiError(status, exc.detail, error_type_of(status), headers=exc.headers))


def handle_disconnect(request: Request, exc: ClientDisconnected) -> Response:
    log.info("%s %s: client disconnected, generation stopped", request.method, request.url.path)
    return Response(content=b"", status_code=499)


def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("Unhandled error in %s %s", request.method, request.url.path)
    return respond(
        request,
        ApiError(500, f"Internal server error: {type(exc).__name__}: {exc}", "server_error",
                 code="internal_error"),
    )


EXCEPTION_HANDLERS = {
    MlxhostError: handle_domain_error,
    ClientDisconnected: handle_disconnect,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}
