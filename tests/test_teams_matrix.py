"""Teams over every route of the API, generated from the OpenAPI document the running API serves, so a new route is
covered by default: two teams (`red`, `blue`), red's resources named in every path; blue's reads and writes of them
answer 404, red's own calls work, admins see everything, user keys are refused on admin routes, and no list shows
blue anything of red's. Then the same at the agent, for commands written to the topic by hand.

Routes not team-scoped are listed in NOT_TEAM_SCOPED, each with why; a route must be there or behave as above.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from streams.envelope import Actor, ActorType
from streams.serialization import encode, envelope_for
from streams.topics import COMMANDS
from streams.workspaces import DeleteWorkspace
from tests.artifacts import kohya_lora
from tests.fake_hub import FakeHub, FakeRepo
from tests.peft_artifacts import TINY_BASE_MODEL, peft_repo_files
from tests.support import Api, Stack, produced, wait_until

# Every red name holds this, so a generic check can say "blue saw nothing of red's" in any answer.
MARK = f"redmark{uuid.uuid4().hex[:6]}"
RED, BLUE = f"crimson{uuid.uuid4().hex[:6]}", f"azure{uuid.uuid4().hex[:6]}"  # the teams' names
WAIT = {"wait": 10}
# Deployments that ask for no instance: they hold no GPU of the nodes other tests register, and run no engine.
IDLE = {"gpu": "H200-141GB", "max_batch_size": 1, "settings": {"min_instances": 0, "max_instances": 1}}

# (method, path) -> why the matrix does not apply. Anything else with a path parameter is team-scoped.
NOT_TEAM_SCOPED: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/v2/events/schema"): "the contract, the same for every key",
    # The inference gateway's routes: test_the_gateway_hides_another_teams_models below (OpenAI's errors, not ours).
    ("GET", "/v1/models"): "gateway",
    ("GET", "/v1/models/{model}"): "gateway",
    ("POST", "/v1/completions"): "gateway",
    ("POST", "/v1/chat/completions"): "gateway",
    ("POST", "/v1/embeddings"): "gateway",
}
# Routes that create: their path names no other team's resource. What they refer to in their body is checked in
# test_a_body_naming_another_teams_resource_is_404 below; a taken name is a 409 (test_a_taken_name_is_409).
CREATES = {
    ("POST", "/v2/workspaces"),
    ("POST", "/api/v1/lora"),
    ("POST", "/v1/lora/create"),
    ("POST", "/api/v1/lora/upload"),
    ("POST", "/deploy/llm"),
    ("POST", "/deploy/lora"),
}
# Bodies for the writes (a guard answers before the body is read, but a valid one shows the 404 is not a 422).
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/v2/workspaces/{workspace}/adapters/{name}"): {"description": "changed"},
    ("PATCH", "/apis/models/v2/workspaces/{workspace}/adapters/{name}"): {"description": "changed"},
    ("PUT", "/deploy/{deploy_id}"): {"settings": {"min_instances": 0, "max_instances": 1}},
}
FILE_UPLOADS = {
    "/v2/workspaces/{workspace}/filesets/{fileset}/files",
    "/apis/models/v2/workspaces/{workspace}/filesets/{fileset}/files",
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    tags: tuple[str, ...]
    params: tuple[str, ...]

    @property
    def admin(self) -> bool:
        return "admin" in self.tags

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)


@dataclass(frozen=True)
class Red:
    workspace: str
    fileset: str
    nemo_adapter: str
    lora: str
    deploy_id: str
    command_id: str

    def fill(self, route: Route) -> str:
        values = {
            "workspace": self.workspace,
            "fileset": self.fileset,
            "deploy_id": self.deploy_id,
            "lora_name": self.lora,
            "command_id": self.command_id,
            "key_id": "0000000000000000",
            "model": self.lora,
            "evaluation_id": "0" * 32,  # admin routes only: any id is refused to a user key
        }
        if route.path.startswith("/v2/workspaces/{name}"):
            values["name"] = self.workspace
        elif route.path.startswith("/api/v1/lora/{name}"):
            values["name"] = f"{self.lora}/check" if route.method == "POST" else self.lora
        else:
            values["name"] = self.nemo_adapter
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], route.path)

    def body(self, route: Route) -> dict[str, Any] | None:
        if route.key == ("POST", "/api/v1/lora/{name}"):
            return {"deploy_id": self.deploy_id}
        if route.method in ("POST", "PUT", "PATCH"):
            return BODIES.get(route.key, {})
        return None


def call(client: Api, route: Route, red: Red, params: dict[str, Any] | None = None) -> Any:
    url = red.fill(route)
    if route.path in FILE_UPLOADS:
        return client.post(url, params=params, files={"file": (f"{MARK}.json", b"{}")})
    body = red.body(route)
    return (
        client.request(route.method, url, params=params, json=body)
        if body is not None
        else client.request(route.method, url, params=params)
    )


@pytest.fixture(scope="module")
def routes(stack: Stack) -> list[Route]:
    with Api(stack, None) as anonymous:
        document = anonymous.get("/schema/openapi.json").json()
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            params = tuple(p["name"] for p in operation.get("parameters", []) if p.get("in") == "path")
            found.append(Route(method.upper(), path, tuple(operation.get("tags", [])), params))
    assert len(found) > 40, "the document lists too few routes to be the API's"
    return found


@pytest.fixture(scope="module")
def team_keys(stack: Stack, admin_key: str) -> Iterator[dict[str, Api]]:
    keys = {}
    for name, role, team in (("red", "user", RED), ("blue", "user", BLUE), ("blue-admin", "admin", BLUE)):
        with Api(stack, admin_key) as admin:
            issued = admin.post("/v2/admin/api-keys", params=WAIT, json={"name": name, "role": role, "team": team})
            assert issued.status_code == 201, issued.text
            keys[name] = issued.json()["key"]
    clients = {name: Api(stack, key) for name, key in keys.items()}
    for client in clients.values():
        wait_until(lambda c=client: c.get("/v2/workspaces").status_code == 200, message="a new key to work")
    yield clients
    for client in clients.values():
        client.close()


@pytest.fixture(scope="module")
def red(team_keys: dict[str, Api], hub_server: FakeHub) -> Red:
    client = team_keys["red"]
    workspace, fileset, lora = f"{MARK}-ws", f"{MARK}-fs", f"{MARK}-lora"
    assert client.post("/v2/workspaces", params=WAIT, json={"name": workspace}).status_code == 201
    stored = client.post(
        f"/v2/workspaces/{workspace}/filesets/{fileset}/files",
        params=WAIT,
        files={"file": ("adapter_config.json", b'{"r": 8}')},
    )
    assert stored.status_code in (201, 202), stored.text
    nemo = client.post(
        f"/v2/workspaces/{workspace}/adapters",
        params={"wait": 0},
        json={
            "name": f"{MARK}-nemo",
            "fileset": f"{workspace}/{fileset}",
            "model": "org/base",
            "finetuning_type": "lora",
        },
    )
    assert nemo.status_code in (201, 202), nemo.text
    hub_server.repos[f"org/{lora}"] = FakeRepo.single(peft_repo_files())
    created = client.post(
        "/api/v1/lora", params={"wait": 30}, json={"model_name": f"org/{lora}", "name": lora, "model_source": "HF_HUB"}
    )
    assert created.status_code == 200 and created.json()["status"] == "ready", created.text
    command_id = client.post("/v2/workspaces", params={"wait": 0}, json={"name": f"{MARK}-other"}).json()["command_id"]
    deployed = client.post(
        "/deploy/llm",
        params=WAIT,
        json={"model_name": f"{MARK}-model", "hf": {"repo": "org/tiny"}, **IDLE},
    )
    assert deployed.status_code == 200, deployed.text
    return Red(workspace, fileset, f"{MARK}-nemo", lora, deployed.json()["deploy_id"], command_id)


def team_scoped(routes: list[Route]) -> list[Route]:
    return [r for r in routes if r.key not in NOT_TEAM_SCOPED and not r.admin and r.key not in CREATES]


def test_every_route_is_covered(routes: list[Route]) -> None:
    """What the other tests do not cover is a documented exception: a new route needs no entry to be tested."""
    paths = {r.key for r in routes}
    assert set(NOT_TEAM_SCOPED) - paths == set(), "an exception for a route that is gone"
    assert CREATES - paths == set(), "an exception for a route that is gone"
    assert [r for r in routes if r.admin], "no admin routes in the document"


def test_blue_reads_and_writes_of_reds_resources_answer_404(
    routes: list[Route], red: Red, team_keys: dict[str, Api]
) -> None:
    blue = team_keys["blue"]
    for route in team_scoped(routes):
        if not route.params:
            continue
        answer = call(blue, route, red, params={"wait": 0})
        assert answer.status_code == 404, (route.key, answer.status_code, answer.text)
        assert RED not in answer.text, (route.key, answer.text)  # no owner named


def test_no_list_shows_blue_anything_of_reds(routes: list[Route], red: Red, team_keys: dict[str, Api]) -> None:
    """Blue's lists hold nothing of red's; red's hold its own; an admin's, filtered by team, hold that team's. (An
    admin's unfiltered lists hold every team's: paged, oldest first, so not checked here on a long-lived stack.)"""
    blue, admin = team_keys["blue"], team_keys["blue-admin"]
    listed_for_red = []
    for route in team_scoped(routes):
        if route.method != "GET" or route.params:
            continue
        answer = blue.get(route.path)
        assert answer.status_code == 200, (route.key, answer.text)
        assert MARK not in answer.text, (route.key, answer.text)
        assert MARK not in admin.get(route.path, params={"team": BLUE}).text, route.key
        if MARK in admin.get(route.path, params={"team": RED}).text:
            listed_for_red.append(route.path)
            assert MARK in team_keys["red"].get(route.path).text, route.key
    assert {"/v2/workspaces", "/api/v1/lora", "/deploy/list"} <= set(listed_for_red)


def test_user_keys_are_refused_on_admin_routes(routes: list[Route], red: Red, team_keys: dict[str, Api]) -> None:
    for route in (r for r in routes if r.admin):
        answer = call(team_keys["red"], route, red)
        assert answer.status_code == 403, (route.key, answer.text)


def test_reds_own_reads_work_and_admins_see_everything(
    routes: list[Route], red: Red, team_keys: dict[str, Api]
) -> None:
    for route in team_scoped(routes):
        if route.method != "GET" or not route.params:
            continue
        for who in ("red", "blue-admin"):
            answer = call(team_keys[who], route, red)
            assert answer.status_code == 200, (who, route.key, answer.text)


def test_a_body_naming_another_teams_resource_is_404(red: Red, team_keys: dict[str, Api]) -> None:
    blue = team_keys["blue"]
    refused = blue.post("/deploy/lora", params={"wait": 0}, json={"deploy_id": red.deploy_id, "lora_name": red.lora})
    assert refused.status_code == 404 and refused.json()["detail"][0]["loc"] == ["body", "deploy_id"]
    own = blue.post(
        "/deploy/llm",
        params=WAIT,
        json={"model_name": "blue-model", "hf": {"repo": "org/tiny"}, **IDLE},
    ).json()["deploy_id"]
    refused = blue.post("/deploy/lora", params={"wait": 0}, json={"deploy_id": own, "lora_name": red.lora})
    assert refused.status_code == 404 and refused.json()["detail"][0]["loc"] == ["body", "lora_name"]
    refused = blue.post(f"/api/v1/lora/{red.lora}/check", json={"deploy_id": own})
    assert refused.status_code == 404, refused.text
    blue.post("/v2/workspaces", params=WAIT, json={"name": f"{BLUE}-ws"})
    assert blue.delete(f"/deploy/{own}", params=WAIT).status_code == 204
    refused = blue.post(
        f"/v2/workspaces/{BLUE}-ws/adapters",
        params={"wait": 0},
        json={
            "name": "stolen",
            "fileset": f"{red.workspace}/{red.fileset}",
            "model": "org/base",
            "finetuning_type": "lora",
        },
    )
    assert refused.status_code == 404 and refused.json()["detail"][0]["loc"] == ["body", "fileset"]


def test_a_taken_name_is_409_and_names_no_owner(red: Red, team_keys: dict[str, Api]) -> None:
    blue = team_keys["blue"]
    for path, body in (
        ("/v2/workspaces", {"name": red.workspace}),
        ("/api/v1/lora", {"model_name": f"org/{red.lora}", "name": red.lora, "model_source": "HF_HUB"}),
    ):
        taken = blue.post(path, params=WAIT, json=body)
        assert taken.status_code == 409, (path, taken.text)
        assert RED not in taken.text, taken.text


def test_a_hand_made_command_of_another_team_is_refused_at_the_agent(
    red: Red, team_keys: dict[str, Api], stack: Stack, admin: Api
) -> None:
    blue_key_id = next(
        k["id"] for k in admin.get("/v2/admin/api-keys", params={"team": BLUE}).json() if k["name"] == "blue"
    )
    sent = []
    with produced(stack.bootstrap) as producer:
        # blue's own key; then blue's key claiming to act for red (the agent goes by the key's team, not the claim)
        for team in (BLUE, RED):
            actor = Actor(type=ActorType.API_KEY, id=blue_key_id, name="blue", team=team)
            command = envelope_for(DeleteWorkspace(name=red.workspace), aggregate_id=red.workspace, actor=actor)
            producer.send(COMMANDS.name, encode(command), key=red.workspace.encode())
            sent.append(command.command_id)
    for command_id in sent:
        outcome = wait_until(
            lambda c=command_id: (s := admin.get(f"/v2/commands/{c}").json())["status"] != "pending" and s,
            message="the agent's answer",
        )
        assert outcome["status"] == "rejected" and outcome["code"] == "not_found", outcome
    assert team_keys["red"].get(f"/v2/workspaces/{red.workspace}").status_code == 200


def test_the_matrix_is_not_empty(routes: list[Route]) -> None:
    scoped = [r for r in team_scoped(routes) if r.params]
    assert len(scoped) >= 20, json.dumps([r.key for r in scoped])


@pytest.fixture(scope="module")
def shared_deployment(team_keys: dict[str, Api]) -> Iterator[str]:
    """Blue's admin shares a deployment of the base model of red's LoRA; deleted at the end, so that no later test
    finds a live deployment of that base model (a stored Empower LoRA would be served on it at once)."""
    body = {"model_name": f"{BLUE}-shared", "hf": {"repo": TINY_BASE_MODEL}, **IDLE}
    refused = team_keys["blue"].post("/deploy/llm", params=WAIT, json={**body, "shared": True})
    assert refused.status_code == 403 and refused.json()["detail"][0]["loc"] == ["body", "shared"]
    shared = team_keys["blue-admin"].post("/deploy/llm", params=WAIT, json={**body, "shared": True})
    assert shared.status_code == 200, shared.text
    deploy_id: str = shared.json()["deploy_id"]
    yield deploy_id
    assert team_keys["blue-admin"].delete(f"/deploy/{deploy_id}", params=WAIT).status_code == 204


def test_a_shared_deployment_is_seen_and_served_on_by_every_team_and_changed_by_its_owner_only(
    red: Red, team_keys: dict[str, Api], shared_deployment: str
) -> None:
    deploy_id = shared_deployment
    red_client = team_keys["red"]
    assert red_client.get(f"/deploy/{deploy_id}").status_code == 200
    assert deploy_id in {d["deploy_id"] for d in red_client.get("/deploy/list").json()}
    # red serves its own LoRA on it (and the agent agrees)
    served = red_client.post("/deploy/lora", params={"wait": 0}, json={"deploy_id": deploy_id, "lora_name": red.lora})
    assert served.status_code == 202, served.text
    command_id = served.json()["command_id"]
    outcome = wait_until(
        lambda: (s := red_client.get(f"/v2/commands/{command_id}").json())["status"] != "pending" and s,
        message="the attach",
    )
    assert outcome["status"] == "succeeded", outcome
    # red's LoRA on it is red's alone to see; its owner (blue) sees only its own adapters there, admins all
    assert red.lora in {a["name"] for a in red_client.get(f"/deploy/{deploy_id}").json()["adapters"]}
    assert MARK not in team_keys["blue"].get(f"/deploy/{deploy_id}").text
    assert MARK not in team_keys["blue"].get("/deploy/list").text
    assert red.lora in team_keys["blue-admin"].get(f"/deploy/{deploy_id}").text
    for method, url, json_body in (
        ("PUT", f"/deploy/{deploy_id}", {"settings": {"min_instances": 0, "max_instances": 2}}),
        ("DELETE", f"/deploy/{deploy_id}", None),
        ("DELETE", f"/deploy/{deploy_id}/lora/{MARK}-not-red-s", None),
    ):
        answer = red_client.request(method, url, params={"wait": 0}, json=json_body)
        assert answer.status_code == 404, (method, url, answer.text)
    # but red stops serving its own LoRA there (as a forced delete of the LoRA does first)
    stopped = red_client.delete(f"/deploy/{deploy_id}/lora/{red.lora}", params={"wait": 0})
    assert stopped.status_code == 202, stopped.text
    command_id = stopped.json()["command_id"]
    outcome = wait_until(
        lambda: (s := red_client.get(f"/v2/commands/{command_id}").json())["status"] != "pending" and s,
        message="the detach",
    )
    assert outcome["status"] == "succeeded", outcome


def test_the_gateway_hides_another_teams_models(red: Red, team_keys: dict[str, Api], shared_deployment: str) -> None:
    """The shared deployment is of red's LoRA's base model: red lists and may call it, blue may not."""
    blue, red_client = team_keys["blue"], team_keys["red"]
    for model in (red.lora, f"default/{red.lora}", f"{red.lora}@v1", f"{MARK}-model"):
        refused = blue.post("/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 1})
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found", refused.text
        assert blue.get(f"/v1/models/{model}").status_code == 404
        assert RED not in refused.text
    assert MARK not in blue.get("/v1/models").text
    assert red.lora in {m["id"] for m in red_client.get("/v1/models").json()["data"]}
    assert red_client.get(f"/v1/models/{red.lora}").status_code == 200
    assert red.lora in {m["id"] for m in team_keys["blue-admin"].get("/v1/models").json()["data"]}


def test_a_seed_004_file_belongs_to_its_uploaders_team(team_keys: dict[str, Api]) -> None:
    name = f"{MARK}-file.safetensors"
    uploaded = team_keys["red"].post("/api/v1/lora/upload", files={"file": (name, kohya_lora(seed=13))}, timeout=120)
    assert uploaded.status_code == 200, uploaded.text
    admin = team_keys["blue-admin"]
    assert name in admin.get("/api/v1/admin/lora", params={"team": RED, "page_size": 1000}).text
    assert name not in admin.get("/api/v1/admin/lora", params={"team": BLUE, "page_size": 1000}).text


def test_reds_own_writes_work(routes: list[Route], red: Red, team_keys: dict[str, Api]) -> None:
    """Last: red's writes of its own resources are taken (not 404, not 403), deletes included."""
    # deletes last, the deepest paths first: a deployment's LoRA before the deployment, adapters before workspaces
    order = sorted(team_scoped(routes), key=lambda r: (r.method == "DELETE", -r.path.count("/")))
    for route in order:
        if route.method == "GET" or not route.params:
            continue
        answer = call(team_keys["red"], route, red, params={"wait": 0})
        assert answer.status_code not in (403, 404), (route.key, answer.status_code, answer.text)
