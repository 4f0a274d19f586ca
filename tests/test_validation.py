"""Bad input is a 422 naming the field, in the seeds' HTTPValidationError shape; never a 500."""

from __future__ import annotations

import pytest

from tests.support import Api


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "has space"}, ["body", "name"]),
        ({"name": "slash/in/name"}, ["body", "name"]),
        ({"name": "ünïcode"}, ["body", "name"]),
        ({"name": "x" * 256}, ["body", "name"]),
        ({"name": ""}, ["body", "name"]),
        ({}, ["body", "name"]),
        ({"name": 12}, ["body", "name"]),
        ({"name": "ok", "description": "d" * 1001}, ["body", "description"]),
        ({"name": "ok", "surprise": 1}, ["body", "surprise"]),
    ],
)
def test_bad_workspace_bodies(user: Api, body: dict[str, object], loc: list[str]) -> None:
    response = user.post("/v2/workspaces", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail and all(set(item) == {"loc", "msg", "type"} for item in detail)
    assert loc in [item["loc"] for item in detail]


def test_longest_allowed_name_is_accepted(user: Api) -> None:
    name = "n" * 250 + "-" + "abcd"
    assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": name}).status_code == 201


def test_malformed_json_is_422(user: Api) -> None:
    response = user.post("/v2/workspaces", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_bad_query_parameter_names_it(user: Api) -> None:
    response = user.post("/v2/workspaces", params={"wait": "soon"}, json={"name": "x1"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "wait"]
    negative = user.post("/v2/workspaces", params={"wait": -1}, json={"name": "x1"})
    assert negative.status_code == 422


def test_unknown_route_is_404_in_the_same_shape(user: Api) -> None:
    response = user.get("/v2/nothing-here")
    assert response.status_code == 404
    assert response.json()["detail"][0]["type"] == "not_found"
