"""Every paged list, found in the OpenAPI document: a page number past the bound is a 422 naming it, never a 500,
and the last allowed page is an empty list."""

from __future__ import annotations

import uuid
from typing import Any

from api.params import MAX_PAGE
from tests.support import Api


def paged_routes(admin: Api) -> list[str]:
    document: dict[str, Any] = admin.get("/schema/openapi.json").json()
    return sorted(
        path
        for path, operations in document["paths"].items()
        if any(parameter["name"] == "page" for parameter in operations.get("get", {}).get("parameters", []))
    )


def test_every_paged_list_bounds_its_page_number(admin: Api) -> None:
    workspace = f"pages-{uuid.uuid4().hex[:8]}"
    assert admin.post("/v2/workspaces", params={"wait": 10}, json={"name": workspace}).status_code == 201
    routes = paged_routes(admin)
    assert "/v2/workspaces" in routes and "/api/v1/lora" in routes and "/api/v1/admin/lora" in routes
    for route in routes:
        path = route.replace("{workspace}", workspace)
        huge = admin.get(path, params={"page": "187669816323031106458440258247469301760"})
        assert huge.status_code == 422, (route, huge.text)
        assert huge.json()["detail"][0]["loc"] == ["query", "page"], (route, huge.text)
        assert admin.get(path, params={"page": MAX_PAGE + 1}).status_code == 422, route
        last = admin.get(path, params={"page": MAX_PAGE, "page_size": 1000})
        assert last.status_code == 200, (route, last.text)
        assert last.json()["data"] == [], route
