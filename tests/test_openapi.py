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
    }
    assert set(paths["/v2/workspaces"]) == {"get", "post"}
    assert set(paths["/v2/workspaces/{name}"]) == {"get", "delete"}
    assert spec["components"]["securitySchemes"]["BearerAuth"] == {"type": "http", "scheme": "bearer"}
    create = paths["/v2/workspaces"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    name = spec["components"]["schemas"][body]["properties"]["name"]
    assert name["maxLength"] == 255 and name["pattern"] == "^[A-Za-z0-9_.\\-]+$"
    assert any(p["name"] == "wait" and p["in"] == "query" for p in create["parameters"])
