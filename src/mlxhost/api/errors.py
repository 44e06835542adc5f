"""Exception handlers: every error leaves the server in OpenAI's error shape."""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, NotFoundException

from mlxhost.errors import ClientDisconnected, MlxhostError

log = logging.getLogger(__name__)


def error_response(
    status: int, message: str, error_type: str, *, param: str | None = None, code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return Response(content=body, status_code=status, headers=headers)


def handle_domain_error(request: Request, exc: MlxhostError) -> Response:
    if exc.status_code >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return Response(content=exc.to_body(), status_code=exc.status_code, headers=exc.headers)


def handle_http_error(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    if isinstance(exc, NotFoundException):
        return error_response(404, f"Unknown path: {request.url.path}", "invalid_request_error",
                              code="not_found")
    if isinstance(exc, NotAuthorizedException):
        return error_response(401, exc.detail, "invalid_request_error", code="invalid_api_key")
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return error_response(status, exc.detail, error_type, headers=exc.headers)


def handle_disconnect(request: Request, exc: ClientDisconnected) -> Response:
    log.info("%s %s: client disconnected, generation stopped", request.method, request.url.path)
    return Response(content=b"", status_code=499)


def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("Unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, f"Internal server error: {type(exc).__name__}: {exc}", "server_error",
                          code="internal_error")


EXCEPTION_HANDLERS = {
    MlxhostError: handle_domain_error,
    ClientDisconnected: handle_disconnect,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}
