"""The proxied routes in the OpenAPI document: Litestar leaves ASGI handlers (api.gateway.asgi) out of it."""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)

from streams.deployments import DEPLOYMENT_HEADER, INSTANCE_HEADER

OPENAI_ERROR = Schema(
    type=OpenAPIType.OBJECT,
    required=["error"],
    properties={
        "error": Schema(
            type=OpenAPIType.OBJECT,
            required=["message", "type", "param", "code"],
            properties={
                "message": Schema(type=OpenAPIType.STRING),
                "type": Schema(type=OpenAPIType.STRING),
                "param": Schema(one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.NULL)]),
                "code": Schema(one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.NULL)]),
            },
        )
    },
)
_ERRORS = {
    "400": "The body is not a JSON object with a string `model`, or the adapter cannot be served (every reason)",
    "401": "No valid API key",
    "404": "No such model (`model_not_found`), or the deployment named by `X-Loraplane-Deployment` does not exist for "
    "the key or does not serve the model (`deployment_not_found`)",
    "413": "The body is over 10 MiB",
    "502": "The engine failed, or the adapter failed to load (the node's reason)",
    "503": "The model exists but no instance runs, or its adapter is still loading (`Retry-After`)",
    "504": "The engine went silent",
}
_ROUTES = {
    "/v1/completions": "OpenAI completions",
    "/v1/chat/completions": "OpenAI chat completions",
    "/v1/embeddings": "OpenAI embeddings (where the engine serves them)",
}


_PIN = Parameter(
    name=DEPLOYMENT_HEADER,
    param_in="header",
    required=False,
    schema=Schema(type=OpenAPIType.STRING, min_length=1),
    description="The deployment (`deploy_id`) that must answer: the one whose `model_name` the request names, or one "
    "of the adapter's base model, on which the adapter is loaded on demand if it is not there yet. Without it, "
    "the gateway picks any deployment that can answer",
)
_TEXT = Schema(type=OpenAPIType.STRING)
_ANSWERED_BY: dict[str, OpenAPIHeader | Reference] = {
    DEPLOYMENT_HEADER: OpenAPIHeader(schema=_TEXT, description="The deployment that answered"),
    INSTANCE_HEADER: OpenAPIHeader(schema=_TEXT, description="Its instance that answered"),
}


def document_proxied_routes(app: Litestar) -> None:
    """Add the proxied routes to the app's OpenAPI document (call before it is first served)."""
    body = Schema(
        type=OpenAPIType.OBJECT,
        required=["model"],
        properties={
            "model": Schema(
                type=OpenAPIType.STRING,
                min_length=1,
                description="A deployment's model_name, or an adapter's name (Empower, DeepInfra, or NeMo "
                "`workspace/name`), optionally `name@vN`",
            ),
            "stream": Schema(type=OpenAPIType.BOOLEAN, description="Server-sent events, passed through as they come"),
        },
        description="The OpenAI request, passed to the engine as it is (`model` becomes the engine's name for it)",
    )
    answer = Schema(type=OpenAPIType.OBJECT, description="The engine's answer, as it is")
    errors = {
        status: OpenAPIResponse(description=text, content={"application/json": OpenAPIMediaType(schema=OPENAI_ERROR)})
        for status, text in _ERRORS.items()
    }
    for path, summary in _ROUTES.items():
        app.openapi_schema.paths = app.openapi_schema.paths or {}
        app.openapi_schema.paths[path] = PathItem(
            post=Operation(
                tags=["inference"],
                summary=summary,
                operation_id=f"Post{path.replace('/', '_').title().replace('_', '')}",
                parameters=[_PIN],
                request_body=RequestBody(content={"application/json": OpenAPIMediaType(schema=body)}, required=True),
                responses={
                    "200": OpenAPIResponse(
                        description="The engine's answer; `text/event-stream` when `stream` is true",
                        headers=_ANSWERED_BY,
                        content={
                            "application/json": OpenAPIMediaType(schema=answer),
                            "text/event-stream": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING)),
                        },
                    ),
                    **errors,
                },
            )
        )
