"""One error shape for every failure: `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`.

The seeds' HTTPValidationError shape, used for every status so clients parse one thing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from streams.outcomes import RejectionCode

log = logging.getLogger(__name__)

Loc = Sequence[str | int]


class ApiError(Exception):
    status_code = 400
    error_type = "bad_request"

    def __init__(self, msg: str, loc: Loc = (), headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.loc = list(loc)
        self.headers = dict(headers or {})


class Unauthorized(ApiError):
    status_code = 401
    error_type = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    error_type = "forbidden"


class NotFound(ApiError):
    status_code = 404
    error_type = "not_found"


class Conflict(ApiError):
    status_code = 409
    error_type = "conflict"


class Unprocessable(ApiError):
    status_code = 422
    error_type = "invalid"


class Unavailable(ApiError):
    """A service the request needs (the broker, S3) does not answer: try again after `Retry-After` seconds."""

    status_code = 503
    error_type = "unavailable"

    def __init__(self, msg: str, loc: Loc = (), headers: dict[str, str] | None = None, retry_after_s: int = 5) -> None:
        super().__init__(msg, loc, {"Retry-After": str(retry_after_s), **(headers or {})})


REJECTIONS: dict[RejectionCode, type[ApiError]] = {
    RejectionCode.CONFLICT: Conflict,
    RejectionCode.INVALID: Unprocessable,
    RejectionCode.NOT_FOUND: NotFound,
}


def error_response(status: int, items: list[dict[str, Any]], headers: dict[str, str] | None = None) -> Response[Any]:
    return Response({"detail": items}, status_code=status, headers=headers)


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    headers = {"WWW-Authenticate": "Bearer", **exc.headers} if exc.status_code == 401 else exc.headers
    return error_response(exc.status_code, [{"loc": exc.loc, "msg": exc.msg, "type": exc.error_type}], headers or None)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    items = []
    for entry in exc.extra if isinstance(exc.extra, list) else []:
        key = str(entry.get("key", "")) if isinstance(entry, dict) else ""
        source = entry.get("source", "body") if isinstance(entry, dict) else "body"
        loc: list[str | int] = [source, *[int(p) if p.isdigit() else p for p in key.split(".") if p]]
        message = entry.get("message", str(entry)) if isinstance(entry, dict) else str(entry)
        items.append({"loc": loc, "msg": message, "type": "value_error"})
    if not items:
        items.append({"loc": ["body"], "msg": exc.detail, "type": "value_error"})
    return error_response(422, items)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    kind = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(status, "error")
    loc: list[str | int] = ["path"] if status in (404, 405) else []
    if status == 400 and "JSON" in str(exc.detail):
        # Malformed JSON is a problem with the body, answered like every other body problem.
        return error_response(422, [{"loc": ["body"], "msg": str(exc.detail), "type": "json_invalid"}])
    return error_response(status, [{"loc": loc, "msg": str(exc.detail), "type": kind}], exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        HTTP_500_INTERNAL_SERVER_ERROR, [{"loc": [], "msg": "internal error; see the server log", "type": "internal"}]
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    ValidationException: _validation_error,
    NotAuthorizedException: _http_error,
    PermissionDeniedException: _http_error,
    NotFoundException: _http_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
