"""The workspace pipeline over HTTP: API -> command topic -> agent -> event -> read model -> GET."""

from __future__ import annotations

import concurrent.futures
import uuid

from tests.support import Api, Stack, events, wait_until


def unique(prefix: str = "ws") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_create_get_list_delete(user: Api, stack: Stack) -> None:
    name = unique()
    created = user.post("/v2/workspaces", params={"wait": 10}, json={"name": name, "description": "team a"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == name and body["description"] == "team a"
    assert body["creator"] == {
        "actor_type": "API_KEY",
        "api_key": {"id": body["creator"]["api_key"]["id"], "name": "test-user"},
    }
    assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]

    assert user.get(f"/v2/workspaces/{name}").json() == body
    total_pages = user.get("/v2/workspaces", params={"page_size": 100}).json()["pagination"]["total_pages"]
    newest = user.get("/v2/workspaces", params={"page_size": 100, "page": total_pages}).json()
    assert newest["data"][-1] == body  # listed oldest first

    deleted = user.delete(f"/v2/workspaces/{name}", params={"wait": 10})
    assert deleted.status_code == 204, deleted.text
    missing = user.get(f"/v2/workspaces/{name}")
    assert missing.status_code == 404
    assert missing.json()["detail"][0]["loc"] == ["path", "name"]

    # the log holds the events, with the actor who caused them
    mine = [e for e in events(stack) if e["aggregate_id"] == name]
    assert [e["type"] for e in mine] == ["workspace.created", "workspace.deleted"]
    assert [e["aggregate_version"] for e in mine] == [1, 2]
    assert all(e["actor"]["type"] == "API_KEY" and e["actor"]["name"] == "test-user" for e in mine)


def test_without_wait_answers_at_once_and_the_command_completes(user: Api) -> None:
    name = unique()
    accepted = user.post("/v2/workspaces", json={"name": name})
    assert accepted.status_code == 202
    status = accepted.json()
    assert status["status"] == "pending"
    assert accepted.headers["location"] == f"/v2/commands/{status['command_id']}"
    done = wait_until(
        lambda: (s := user.get(accepted.headers["location"]).json())["status"] != "pending" and s,
        message="the command's outcome",
    )
    assert done["status"] == "succeeded" and done["event_type"] == "workspace.created"
    assert user.get(f"/v2/workspaces/{name}").status_code == 200


def test_duplicate_is_a_409_decided_by_the_agent(user: Api, stack: Stack) -> None:
    name = unique()
    assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": name}).status_code == 201
    again = user.post("/v2/workspaces", params={"wait": 10}, json={"name": name})
    assert again.status_code == 409
    assert again.json() == {
        "detail": [{"loc": ["body", "name"], "msg": f"workspace {name!r} already exists", "type": "conflict"}]
    }
    # the refusal is the agent's: it is an event in the log
    rejected = [e for e in events(stack) if e["aggregate_id"] == name and e["type"] == "command.rejected"]
    assert len(rejected) == 1 and rejected[0]["payload"]["code"] == "conflict"


def test_concurrent_creates_of_one_name_exactly_one_wins(user: Api, stack: Stack) -> None:
    name = unique()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: user.post("/v2/workspaces", params={"wait": 20}, json={"name": name}).status_code, range(8)
            )
        )
    assert sorted(codes) == [201] + [409] * 7
    created = [e for e in events(stack) if e["aggregate_id"] == name and e["type"] == "workspace.created"]
    assert len(created) == 1


def test_delete_of_a_missing_workspace_is_404(user: Api) -> None:
    response = user.delete(f"/v2/workspaces/{unique('nope')}", params={"wait": 10})
    assert response.status_code == 404
    assert response.json()["detail"][0]["type"] == "not_found"


def test_recreate_after_delete(user: Api) -> None:
    name = unique()
    assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": name}).status_code == 201
    assert user.delete(f"/v2/workspaces/{name}", params={"wait": 10}).status_code == 204
    assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": name}).status_code == 201


def test_pagination(user: Api) -> None:
    prefix = unique("page")
    for i in range(3):
        assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": f"{prefix}-{i}"}).status_code == 201
    first = user.get("/v2/workspaces", params={"page": 1, "page_size": 2}).json()
    assert first["pagination"]["page_size"] == 2 and first["pagination"]["current_page_size"] == 2
    assert first["pagination"]["total_pages"] == -(-first["pagination"]["total_results"] // 2)
