"""What every route can answer, in one place, and the OpenAPI document made to say so.

Litestar documents a route's success and a 400 it never sends. The answers follow from what a route is: public or
behind a key, for admins or not, with a path to resolve, with input to validate, publishing a command or not, with
`?wait=`, streaming an upload. `answers_for` decides them from those facts (a pure function, unit-tested);
`document_contract` reads the facts off the app's routes at start-up and rewrites the document: every status with its
error schema, `security: []` on public routes, `additionalProperties: false` on the bodies that refuse extra fields,
and the seeds' examples on the routes they come from.

A route that answers something the facts cannot tell declares it with `opt=answers(...)` on its decorator.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import (
    Components,
    Example,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.routes import HTTPRoute
from pydantic import BaseModel

from api.auth import PUBLIC_PATHS, admin_only
from api.examples import REQUEST_EXAMPLES, RESPONSE_EXAMPLES
from api.gateway.openapi import OPENAI_ERROR
from api.gateway.routes import GATEWAY_PATHS

# Inputs Litestar injects rather than reads from the request.
_INJECTED = {"state", "request", "bus", "scope", "socket"}
_OPT_KEY = "loraplane_answers"
_HTTP_VALIDATION_ERROR = "#/components/schemas/HTTPValidationError"
_SCHEMA_PATHS = re.compile(r"^/schema(/|$)")


@dataclass(frozen=True)
class RouteFacts:
    method: str
    public: bool = False
    gateway: bool = False  # errors in OpenAI's shape
    admin_only: bool = False
    path_params: bool = False
    inputs: bool = False  # query, header, path or body parameters to validate
    json_body: bool = False
    waits: bool = False  # takes `?wait=`
    upload: bool = False  # streams a multipart body to S3
    success: int = 200  # the status the route's decorator names; 202 on deletes that answer 204 once done
    extra: Mapping[int, str] = field(default_factory=dict)  # declared by the route (`answers(...)`)

    @property
    def writes(self) -> bool:
        return self.method not in ("GET", "HEAD")


def answers(**declared: str) -> dict[str, Any]:
    """`opt=` for a route decorator: statuses the facts cannot tell, e.g. `answers(s503="the read model is behind")`."""
    return {_OPT_KEY: {int(key.removeprefix("s")): text for key, text in declared.items()}}


def answers_for(facts: RouteFacts) -> dict[int, str]:
    """Every error (and pending) status the route can answer, with what it means there."""
    found: dict[int, str] = {}
    if not facts.public:
        found[401] = "No API key, or an invalid or revoked one"
    if facts.admin_only:
        found[403] = "The key is not an admin key"
    if facts.path_params or facts.writes:
        found[404] = "A resource the request names does not exist"
    if facts.writes:
        found[409] = "Refused: it conflicts with the current state (a name taken, a resource in use)"
    if facts.json_body or facts.upload:
        found[413] = "The body is larger than the route takes"
    if facts.inputs and facts.gateway:
        found[400] = "A parameter is invalid (`param` names it)"
    elif facts.inputs:
        found[422] = "A parameter or a field of the body is invalid (`loc` names it)"
    if facts.waits:
        found[202] = "The command is published; its outcome was not known when `?wait=` ran out"
        if facts.method == "DELETE" and facts.success == 202:
            found[204] = "Deleted (with `?wait=`)"
    if facts.writes:
        found[503] = (
            "The broker did not take the command in time: it may or may not be recorded (`Location`, when given, "
            "tells once the broker is back); try again after `Retry-After` seconds"
        )
    if facts.upload:
        found[503] = "S3 or the broker is unavailable; try again after `Retry-After` seconds"
    found.update(facts.extra)
    return found


def document_contract(app: Litestar) -> None:
    """Rewrite the app's OpenAPI document from the routes' facts (call on start-up, before it is first served)."""
    document = app.openapi_schema
    components = document.components if isinstance(document.components, Components) else Components()
    document.components = components
    schemas = components.schemas = dict(components.schemas or {})
    schemas.update(_ERROR_SCHEMAS)
    _close_refusing_bodies(app, schemas)
    for path, method, handler in _operations(app):
        item = (document.paths or {}).get(path)
        operation = getattr(item, method.lower(), None) if item is not None else None
        if not isinstance(operation, Operation):
            continue
        facts = facts_of(path, method, handler)
        if facts.public:
            operation.security = []
        if facts.upload and operation.request_body is None:
            operation.request_body = _FILE_FORM
        error: Schema | Reference = OPENAI_ERROR if facts.gateway else Reference(_HTTP_VALIDATION_ERROR)
        responses = {
            code: answer for code, answer in (operation.responses or {}).items() if code != "400"
        }  # never sent
        success = next((answer for code, answer in sorted(responses.items()) if code.startswith("2")), None)
        for status, text in sorted(answers_for(facts).items()):
            if status == 202 and status in facts.extra and isinstance(success, OpenAPIResponse):
                # the route answers what it has so far, in its success shape
                responses["202"] = OpenAPIResponse(description=text, content=success.content, headers=_LOCATION)
            elif str(status) not in responses or status in (202, 204):
                responses[str(status)] = _response(status, text, error)
        operation.responses = responses
        if (example := REQUEST_EXAMPLES.get((method, path))) is not None:
            _add_request_example(operation, example)
        if (example := RESPONSE_EXAMPLES.get((method, path))) is not None and isinstance(success, OpenAPIResponse):
            for media in (success.content or {}).values():
                media.examples = {"seed": Example(summary="From the seed's own example", value=example)}


def facts_of(path: str, method: str, handler: HTTPRouteHandler) -> RouteFacts:
    inputs = {name: p for name, p in handler.parsed_fn_signature.parameters.items() if name not in _INJECTED}
    guards = [guard for layer in handler.ownership_layers for guard in (layer.guards or [])]
    upload = handler.request_max_body_size is None  # api.uploads.UPLOAD_ROUTE_OPTIONS: it streams its own body
    return RouteFacts(
        method=method,
        public=path in PUBLIC_PATHS or bool(_SCHEMA_PATHS.match(path)),
        gateway=bool(re.match(GATEWAY_PATHS, path)),
        admin_only=admin_only in guards,
        path_params="{" in path,
        inputs=bool(inputs) or upload,
        json_body="data" in inputs,
        waits="wait" in inputs,
        upload=upload,
        success=handler.status_code,
        extra=handler.opt.get(_OPT_KEY, {}),
    )


def _operations(app: Litestar) -> Iterator[tuple[str, str, HTTPRouteHandler]]:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            for method in sorted(handler.http_methods):
                if method not in ("OPTIONS", "HEAD"):
                    yield route.path_format, method, handler


def _response(status: int, text: str, error: Schema | Reference) -> OpenAPIResponse:
    if status == 204:
        return OpenAPIResponse(description=text)
    if status == 202:
        schema = Reference("#/components/schemas/CommandStatus")
        return OpenAPIResponse(
            description=text, content={"application/json": OpenAPIMediaType(schema=schema)}, headers=_LOCATION
        )
    headers = _RETRY_AFTER if status == 503 else None
    return OpenAPIResponse(
        description=text, content={"application/json": OpenAPIMediaType(schema=error)}, headers=headers
    )


_LOCATION: dict[str, OpenAPIHeader | Reference] = {
    "Location": OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description="Where to ask again")
}
_RETRY_AFTER: dict[str, OpenAPIHeader | Reference] = {
    "Retry-After": OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER), description="Seconds")
}


def _close_refusing_bodies(app: Litestar, schemas: dict[str, Any]) -> None:
    """`additionalProperties: false` on every request model that refuses extra fields (pydantic's extra="forbid")."""
    for _, _, handler in _operations(app):
        data = handler.parsed_fn_signature.parameters.get("data")
        if data is None:
            continue
        for model in _models_in(data.annotation):
            schema = schemas.get(model.__name__)
            if isinstance(schema, Schema) and model.model_config.get("extra") == "forbid":
                schema.additional_properties = False


def _models_in(annotation: Any, seen: set[type[BaseModel]] | None = None) -> Iterator[type[BaseModel]]:
    seen = set() if seen is None else seen
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return
        seen.add(annotation)
        yield annotation
        for info in annotation.model_fields.values():
            yield from _models_in(info.annotation, seen)
        return
    for argument in get_args(annotation):
        yield from _models_in(argument, seen)


def _add_request_example(operation: Operation, example: dict[str, Any]) -> None:
    body = operation.request_body
    if body is None or isinstance(body, Reference):
        return
    for media in body.content.values():
        media.examples = {"seed": Example(summary="From the seed's own example", value=example)}


def file_form(file_description: str | None = None, **fields: Schema) -> RequestBody:
    """A multipart body with a `file` part and these text fields: what the streamed upload routes read."""
    file = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description=file_description)
    return RequestBody(
        required=True,
        content={
            "multipart/form-data": OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.OBJECT, required=["file"], properties={"file": file, **fields})
            )
        },
    )


_FILE_FORM = file_form()

_ERROR_SCHEMAS: dict[str, Schema] = {
    "ValidationError": Schema(
        type=OpenAPIType.OBJECT,
        title="ValidationError",
        required=["loc", "msg", "type"],
        properties={
            "loc": Schema(
                type=OpenAPIType.ARRAY,
                title="Location",
                items=Schema(one_of=[Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.INTEGER)]),
            ),
            "msg": Schema(type=OpenAPIType.STRING, title="Message"),
            "type": Schema(type=OpenAPIType.STRING, title="Error Type"),
        },
    ),
    "HTTPValidationError": Schema(
        type=OpenAPIType.OBJECT,
        title="HTTPValidationError",
        description="Every error of the API (the seeds' shape): what went wrong, and where",
        required=["detail"],
        properties={
            "detail": Schema(
                type=OpenAPIType.ARRAY, title="Detail", items=Reference("#/components/schemas/ValidationError")
            )
        },
    ),
}
