"""OPTIONS on any route: 204 with every method the path takes in `Allow`.

Litestar makes one OPTIONS handler per path when the first of its handlers registers, so its `Allow` named only
that handler's methods, and on admin routes the guard ran (with no key checked for OPTIONS) and answered 500.
"""

from __future__ import annotations

from functools import cache

from litestar import Litestar
from litestar.routes import ASGIRoute, HTTPRoute
from litestar.types import ASGIApp, Receive, Scope, Send


@cache
def _allowed(app: Litestar) -> dict[str, str]:
    allowed: dict[str, str] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            allowed[route.path_format] = ", ".join(sorted(route.methods | {"OPTIONS"}))
        elif isinstance(route, ASGIRoute):
            allowed[route.path_format] = "OPTIONS, POST"  # the proxied OpenAI routes (api.gateway.asgi)
    return allowed


def options_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "OPTIONS":
            await app(scope, receive, send)
            return
        allow = _allowed(scope["litestar_app"]).get(scope.get("path_template", ""), "OPTIONS")
        await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow.encode())]})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return middleware
