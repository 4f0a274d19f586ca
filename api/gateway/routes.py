"""The OpenAI-compatible routes: `GET /v1/models`, `POST /v1/completions`, `/v1/chat/completions`, `/v1/embeddings`.

The API keys are the rest of the API's (`Authorization: Bearer lp_...`), checked here against the gateway's own fold
of the log (so a gateway process needs no read model), and every error is in OpenAI's shape (api.gateway.errors).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath

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
    await gateway.authenticate(request.headers.get("authorization"))
    return {"object": "list", "data": gateway.models()}


@get(
    "/v1/models/{model:path}",
    tags=["inference"],
    summary="One model the caller can call",
    exception_handlers=GATEWAY_EXCEPTION_HANDLERS,
)
async def get_model(model: FromPath[str], request: Request[Any, Any, State]) -> dict[str, Any]:
    gateway = _gateway(request.app.state)
    await gateway.authenticate(request.headers.get("authorization"))
    wanted = model.lstrip("/")
    for card in gateway.models():
        if card["id"] == wanted:
            return card
    raise ModelNotFound(f"the model {wanted!r} does not exist", param="model")


@post(
    PROXIED,
    tags=["inference"],
    summary="OpenAI completions, chat completions and embeddings, answered by the engine serving `model`",
    description=(
        "`model` is a deployment's model_name or an adapter's name (Empower or DeepInfra name, or NeMo "
        "`workspace/name`), optionally `name@vN`. A stored adapter no instance holds is loaded on demand first. "
        "`stream: true` passes the engine's server-sent events through as they come."
    ),
    status_code=200,
    exception_handlers=GATEWAY_EXCEPTION_HANDLERS,
)
async def proxy(request: Request[Any, Any, State]) -> Response[Any]:
    gateway = _gateway(request.app.state)
    principal = await gateway.authenticate(request.headers.get("authorization"))
    return await gateway.forward(request.url.path, await request.body(), principal)


ROUTES: list[Any] = [list_models, get_model, proxy]
