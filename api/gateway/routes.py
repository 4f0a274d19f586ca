"""The OpenAI-compatible routes: `GET /v1/models`, `POST /v1/completions`, `/v1/chat/completions`, `/v1/embeddings`.

The API keys are the rest of the API's (`Authorization: Bearer lp_...`), checked here against the gateway's own fold
of the log (so a gateway process needs no read model), and every error is in OpenAI's shape (api.gateway.errors).
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, asgi, get
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.types import Receive, Scope, Send

from api.gateway.asgi import serve
from api.gateway.errors import GATEWAY_EXCEPTION_HANDLERS, ModelNotFound
from api.gateway.service import Gateway

# Paths the rest of the API's key middleware leaves to these routes (they answer 401 in OpenAI's shape).
GATEWAY_PATHS = r"^/v1/(models(/.*)?|completions|chat/completions|embeddings)$"
PROXIED = ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"]


def _gateway(state: State) -> Gateway:
    gateway: Gateway = state.gateway
    return gateway


@get(
    "/v1/models",
    tags=["inference"],
    summary="The models the caller can call: deployments and the adapters they serve or can load",
    exception_handlers=GATEWAY_EXCEPTION_HANDLERS,
)
async def list_models(request: Request[Any, Any, State]) -> dict[str, Any]:
    gateway = _gateway(request.app.state)
    principal = await gateway.authenticate(request.headers.get("authorization"))
    return {"object": "list", "data": gateway.models(principal)}


@get(
    "/v1/models/{model:path}",
    tags=["inference"],
    summary="One model the caller can call",
    exception_handlers=GATEWAY_EXCEPTION_HANDLERS,
)
async def get_model(model: FromPath[str], request: Request[Any, Any, State]) -> dict[str, Any]:
    gateway = _gateway(request.app.state)
    principal = await gateway.authenticate(request.headers.get("authorization"))
    wanted = model.lstrip("/")
    for card in gateway.models(principal):
        if card["id"] == wanted:
            return card
    raise ModelNotFound(f"the model {wanted!r} does not exist", param="model")


@asgi(PROXIED, copy_scope=False)
async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
    """OpenAI completions, chat completions and embeddings, answered by the engine serving `model` (in the OpenAPI
    document through api.gateway.openapi: Litestar leaves ASGI handlers out of it)."""
    await serve(_gateway(Litestar.from_scope(scope).state), scope, receive, send)


ROUTES: list[Any] = [list_models, get_model, proxy]
