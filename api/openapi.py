"""The OpenAPI document's settings, one for every app (the API, and the gateway on its own): bearer keys."""

from __future__ import annotations

from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme


def openapi_config(title: str, description: str) -> OpenAPIConfig:
    return OpenAPIConfig(
        title=title,
        version="0.1.0",
        description=description,
        path="/schema",
        components=Components(security_schemes={"BearerAuth": SecurityScheme(type="http", scheme="bearer")}),
        security=[{"BearerAuth": []}],
    )
