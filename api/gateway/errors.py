"""Errors of the inference gateway in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

OpenAI's clients read this shape (and retry 408, 409, 429 and 5xx by themselves), so every gateway route answers it,
never the HTTPValidationError shape of the rest of the API, and never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """What the gateway answers: a whole body, or a stream of chunks sent as they come."""

    status: int
    content_type: str
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class GatewayError(Exception):
    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}
        if self.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.code, self.param)

    def answer(self) -> Answer:
        return Answer(self.status_code, "application/json", msgspec.json.encode(self.body()), headers=self.headers())

    def response(self) -> Response[Any]:
        return openai_error(self.status_code, self.message, self.error_type, self.code, self.param, self.headers())


class BadRequest(GatewayError):
    code = "invalid_request"


class Unauthorized(GatewayError):
    status_code = 401
    code = "invalid_api_key"


class MethodNotAllowed(GatewayError):
    status_code = 405
    code = "method_not_allowed"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Allow": "POST"}


class ModelNotFound(GatewayError):
    status_code = 404
    code = "model_not_found"


class DeploymentNotFound(GatewayError):
    """The deployment a request is pinned to (`X-Loraplane-Deployment`) cannot answer its model for this caller."""

    status_code = 404
    code = "deployment_not_found"


class Unavailable(GatewayError):
    """The model exists, but nothing can answer it now: try again later (`Retry-After`)."""

    status_code = 503
    error_type = "server_error"
    code = "model_not_ready"


class EngineFailed(GatewayError):
    status_code = 502
    error_type = "server_error"
    code = "engine_error"


class EngineTimedOut(GatewayError):
    status_code = 504
    error_type = "server_error"
    code = "engine_timeout"


class Internal(GatewayError):
    status_code = 500
    error_type = "server_error"
    code = "internal_error"


class TooLarge(GatewayError):
    status_code = 413
    code = "request_too_large"


def error_body(message: str, error_type: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def openai_error(
    status: int,
    message: str,
    error_type: str,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    return Response(error_body(message, error_type, code, param), status_code=status, headers=headers)


def _gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    return exc.response()


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, ValidationException):
        return openai_error(400, str(exc.detail), "invalid_request_error", "invalid_request")
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return openai_error(exc.status_code, str(exc.detail), kind, None, None, exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return openai_error(500, "internal error; see the gateway's log", "server_error", "internal_error")


# Every type the app's own handlers (api.errors) name, so none of theirs answers on a gateway route.
GATEWAY_EXCEPTION_HANDLERS: dict[Any, Any] = {
    GatewayError: _gateway_error,
    ValidationException: _http_error,
    NotAuthorizedException: _http_error,
    PermissionDeniedException: _http_error,
    NotFoundException: _http_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
