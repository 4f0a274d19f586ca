"""The OpenAPI document at /schema describes every route, with the bearer scheme."""

from __future__ import annotations

from tests.support import Api


def test_every_route_is_documented(anonymous: Api) -> None:
    spec = anonymous.get("/schema/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) >= {
        "/healthz",
        "/readyz",
        "/v2/workspaces",
        "/v2/workspaces/{name}",
        "/v2/commands/{command_id}",
        "/v2/admin/api-keys",
        "/v2/admin/api-keys/{key_id}",
        "/v2/events/schema",
    }
    assert set(paths["/v2/workspaces"]) == {"get", "post"}
    assert set(paths["/v2/workspaces/{name}"]) == {"get", "delete"}
    assert set(paths["/v2/events/schema"]) == {"get"}
    assert spec["components"]["securitySchemes"]["BearerAuth"] == {"type": "http", "scheme": "bearer"}
    create = paths["/v2/workspaces"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    name = spec["components"]["schemas"][body]["properties"]["name"]
    assert name["maxLength"] == 255 and name["pattern"] == "^[A-Za-z0-9_.\\-]+$"
    assert any(p["name"] == "wait" and p["in"] == "query" for p in create["parameters"])


def test_the_gateway_s_routes_are_documented_with_openai_s_error_shape(anonymous: Api) -> None:
    paths = anonymous.get("/schema/openapi.json").json()["paths"]
    assert {"/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v2/usage"} <= set(paths)
    completions = paths["/v1/completions"]["post"]
    assert completions["requestBody"]["content"]["application/json"]["schema"]["required"] == ["model"]
    assert {"200", "400", "401", "404", "502", "503", "504"} <= set(completions["responses"])
    error = completions["responses"]["404"]["content"]["application/json"]["schema"]
    assert set(error["properties"]["error"]["properties"]) == {"message", "type", "param", "code"}
    # A request may be pinned to a deployment; every answer says which deployment and instance answered.
    [pin] = [p for p in completions["parameters"] if p["in"] == "header"]
    assert pin["name"] == "X-Loraplane-Deployment" and pin["required"] is False
    assert {"X-Loraplane-Deployment", "X-Loraplane-Instance"} <= set(completions["responses"]["200"]["headers"])
