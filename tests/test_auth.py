"""Bearer API keys with roles; keys are stored hashed and the actor is on every command and event."""

from __future__ import annotations

import hashlib

import httpx

from tests.support import Api, Stack, events, read_topic


def test_health_needs_no_key(anonymous: Api) -> None:
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    ready = anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"broker": True, "s3": True, "read_model": True, "gateway": True}
    assert anonymous.get("/metrics").status_code == 200


def test_every_other_route_needs_a_key(anonymous: Api, stack: Stack) -> None:
    for method, path in [
        ("GET", "/v2/workspaces"),
        ("POST", "/v2/workspaces"),
        ("GET", "/v2/workspaces/x"),
        ("DELETE", "/v2/workspaces/x"),
        ("GET", "/v2/admin/api-keys"),
        ("GET", "/v2/commands/abc"),
    ]:
        response = anonymous.request(method, path, json={"name": "x"} if method == "POST" else None)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["detail"][0]["loc"] == ["header", "Authorization"]
        assert response.headers["www-authenticate"] == "Bearer"
    for bad in ["Bearer nonsense", "Bearer lp_0000000000000000_notarealkey", "Basic dXNlcjpwYXNz", "Bearer"]:
        assert httpx.get(f"{stack.api_url}/v2/workspaces", headers={"Authorization": bad}).status_code == 401


def test_admin_routes_refuse_user_keys(user: Api, admin: Api) -> None:
    assert user.get("/v2/admin/api-keys").status_code == 403
    refused = user.post("/v2/admin/api-keys", json={"name": "sneaky", "role": "admin"})
    assert refused.status_code == 403
    assert refused.json()["detail"][0]["type"] == "forbidden"
    assert admin.get("/v2/admin/api-keys").status_code == 200


def test_admin_issues_and_revokes_a_key(admin: Api, stack: Stack) -> None:
    issued = admin.post(
        "/v2/admin/api-keys", params={"wait": 10}, json={"name": "ci-bot", "role": "user", "team": "bots"}
    )
    assert issued.status_code == 201, issued.text
    assert issued.json()["team"] == "bots"
    key = issued.json()["key"]
    with Api(stack, key) as bot:
        assert bot.get("/v2/workspaces").status_code == 200
        listed = {k["id"]: k for k in admin.get("/v2/admin/api-keys").json()}
        assert listed[issued.json()["id"]]["role"] == "user" and "key" not in listed[issued.json()["id"]]
        assert listed[issued.json()["id"]]["team"] == "bots"
        assert admin.delete(f"/v2/admin/api-keys/{issued.json()['id']}", params={"wait": 10}).status_code == 204
        assert bot.get("/v2/workspaces").status_code == 401


def test_a_key_without_a_team_is_of_default_and_team_names_follow_the_workspace_rules(admin: Api) -> None:
    issued = admin.post("/v2/admin/api-keys", params={"wait": 10}, json={"name": "no-team"})
    assert issued.status_code == 201 and issued.json()["team"] == "default"
    refused = admin.post("/v2/admin/api-keys", json={"name": "bad-team", "team": "a team/with slash"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "team"]


def test_keys_are_stored_only_as_digests(admin: Api, stack: Stack, admin_key: str) -> None:
    issued = admin.post("/v2/admin/api-keys", params={"wait": 10}, json={"name": "digest-check"}).json()
    key = issued["key"]
    everything = b"".join(
        (r.value or b"") for t in ("loraplane.commands", "loraplane.events") for r in read_topic(stack, t)
    )
    assert key.encode() not in everything and admin_key.encode() not in everything
    assert hashlib.sha256(key.encode()).hexdigest().encode() in everything
    stored = b"".join(p.read_bytes() for p in stack.data_dir.glob("readmodel.db*"))  # with the WAL
    assert hashlib.sha256(key.encode()).hexdigest().encode() in stored  # so the search sees recent rows
    assert key.encode() not in stored


def test_actor_is_recorded_on_commands_and_events(admin: Api, stack: Stack) -> None:
    created = admin.post("/v2/workspaces", params={"wait": 10}, json={"name": "actor-check"})
    assert created.status_code in (201, 409)
    key_id = admin.get("/v2/workspaces/actor-check").json()["creator"]["api_key"]["id"]
    commands = [r.json() for r in read_topic(stack, "loraplane.commands") if r.key == b"actor-check"]
    evts = [e for e in events(stack) if e["aggregate_id"] == "actor-check"]
    for message in [*commands[:1], *evts[:1]]:
        assert message["actor"] == {"type": "API_KEY", "id": key_id, "name": "test-admin", "team": "default"}
