"""Seed 000: `POST /api/v1/lora` registers a LoRA from the (fake, local) Hugging Face Hub through the whole
pipeline: command, artifacts agent, real PEFT files validated and stored in S3, events, read model."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from minio import Minio

from infra.s3_objects import read_object
from streams.artifacts import blob_key
from tests.fake_hub import FakeHub, FakeRepo
from tests.peft_artifacts import TINY_BASE_MODEL, peft_repo_files
from tests.support import Api, Stack, events, wait_until

WAIT = {"wait": 60}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def s3_client(stack: Stack) -> tuple[Minio, str]:
    """A minio client on the stack's own S3, and its bucket."""
    env = stack.env
    endpoint = urlsplit(env["S3_ENDPOINT"])
    client = Minio(
        endpoint.netloc,
        access_key=env.get("S3_ACCESS_KEY", "loraplane"),
        secret_key=env.get("S3_SECRET_KEY", "loraplane-secret"),
        secure=endpoint.scheme == "https",
        region=env.get("S3_REGION", "us-east-1"),
    )
    return client, env.get("S3_BUCKET", "loraplane")


def stored_sha256(stack: Stack, key: str) -> str:
    client, bucket = s3_client(stack)
    return hashlib.sha256(read_object(client, bucket, key)).hexdigest()


def adapter_events(stack: Stack, name: str, kind: str | None = None) -> list[dict[str, Any]]:
    found = [e for e in events(stack) if e["aggregate_id"] == f"default/{name}"]
    return [e for e in found if kind is None or e["type"] == kind]


def add_repo(hub: FakeHub, repo_id: str, files: dict[str, bytes], **kwargs: Any) -> str:
    """Serve `files` as `repo_id` (one commit on main); answer the commit sha."""
    repo = FakeRepo.single(files, **kwargs)
    hub.repos[repo_id] = repo
    return repo.branches["main"]


def register(client: Api, **body: Any) -> Any:
    return client.post("/api/v1/lora", json={"model_source": "HF_HUB", **body}, params=WAIT)


def assert_refused(answer: Any, field: str, *words: str) -> str:
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["detail"]
    assert detail["loc"] == ["body", field], detail
    for word in words:
        assert word in detail["msg"], detail
    return str(detail["msg"])


@pytest.fixture(scope="module")
def tagged_repo(hub_server: FakeHub) -> tuple[str, str, dict[str, bytes]]:
    files = peft_repo_files()
    repo_id = unique("loraplane-tests") + "/tiny-lora"
    return repo_id, add_repo(hub_server, repo_id, files, tags=("v1.0",)), files


@pytest.fixture(scope="module")
def registered(user: Api, tagged_repo: tuple[str, str, dict[str, bytes]]) -> tuple[str, Any]:
    """One registration at a tag, made once for the tests that read it."""
    repo_id, _, _ = tagged_repo
    name = unique("custom_lora")
    answer = register(user, model_name=repo_id, hf_revision="v1.0", name=name)
    return name, answer


@pytest.fixture(scope="module")
def user(stack: Stack, user_key: str) -> Any:  # module-scoped for the module fixtures above
    with Api(stack, user_key) as client:
        yield client


def test_a_lora_from_the_hub_is_fetched_validated_and_stored(
    stack: Stack, tagged_repo: tuple[str, str, dict[str, bytes]], registered: tuple[str, Any]
) -> None:
    _, commit, files = tagged_repo
    name, answer = registered
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("name", "unit_price", "active_deployment")} == {
        "name": name,
        "unit_price": 1.25,  # LORAPLANE_LORA_UNIT_PRICES names the tiny Llama the adapter was trained on
        "active_deployment": None,
    }
    assert body["status"] == "ready" and body["version"] == 1
    assert body["hf_revision"] == commit  # the tag, resolved
    assert body["base_model_name"] == TINY_BASE_MODEL

    [ready] = adapter_events(stack, name, "adapter.stored")
    provenance = ready["payload"]["provenance"]
    assert provenance["hf_revision"] == "v1.0" and provenance["hf_commit"] == commit
    assert provenance["license"] == "apache-2.0"
    artifact = ready["payload"]["artifact"]
    stored = {f["path"]: f for f in artifact["files"]}
    assert set(stored) == set(files)
    for path, content in files.items():
        digest = hashlib.sha256(content).hexdigest()
        assert stored[path]["key"] == blob_key(digest) and stored[path]["size"] == len(content)
        assert stored_sha256(stack, blob_key(digest)) == digest  # the bytes in S3 are the repo's
    assert artifact["sha256"] == hashlib.sha256(files["adapter_model.safetensors"]).hexdigest()
    analysis = ready["payload"]["analysis"]
    assert (analysis["format"], analysis["rank"], analysis["base_model"]) == ("peft_llm", 4, TINY_BASE_MODEL)
    assert set(analysis["target_modules"]) == {"q_proj", "v_proj"}


def test_registering_a_name_again_makes_version_2_over_the_same_blobs(
    stack: Stack, user: Api, tagged_repo: tuple[str, str, dict[str, bytes]], registered: tuple[str, Any]
) -> None:
    repo_id, _, files = tagged_repo
    name, first = registered
    assert first.status_code == 200, first.text
    again = register(user, model_name=repo_id, name=name)  # no revision: main, the same commit
    assert again.status_code == 200, again.text
    assert again.json()["version"] == 2
    assert user.get(f"/api/v1/lora/{name}").json()["version"] == 2

    readies = adapter_events(stack, name, "adapter.stored")
    assert [e["payload"]["version"] for e in readies] == [1, 2]
    assert readies[0]["payload"]["artifact"]["files"] == readies[1]["payload"]["artifact"]["files"]
    client, bucket = s3_client(stack)
    for content in files.values():
        key = blob_key(hashlib.sha256(content).hexdigest())
        assert [o.object_name for o in client.list_objects(bucket, prefix=key)] == [key]  # stored once


def test_without_wait_the_answer_is_202_and_get_follows_the_version(
    user: Api, hub_server: FakeHub, tagged_repo: tuple[str, str, dict[str, bytes]]
) -> None:
    repo_id, commit, _ = tagged_repo
    name = unique("later")
    answer = user.post("/api/v1/lora", json={"model_name": repo_id, "model_source": "HF_HUB", "name": name})
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/v2/commands/{answer.json()['command_id']}"
    ready = wait_until(
        lambda: (r := user.get(f"/api/v1/lora/{name}")).status_code == 200 and r.json()["status"] == "ready" and r,
        timeout=60,
        message="the version to be ready",
    )
    assert ready.json()["hf_revision"] == commit


def test_the_name_defaults_to_the_repo_id_and_may_hold_a_slash(user: Api, hub_server: FakeHub) -> None:
    repo_id = unique("org") + "/default-name"
    add_repo(hub_server, repo_id, peft_repo_files(seed=1))
    answer = register(user, model_name=repo_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == repo_id
    got = user.get(f"/api/v1/lora/{repo_id}")
    assert got.status_code == 200 and got.json()["model_name"] == repo_id
    assert repo_id in [lora["name"] for lora in user.get("/api/v1/lora", params={"page_size": 1000}).json()["data"]]

    deleted = user.delete(f"/api/v1/lora/{repo_id}", params=WAIT)
    assert deleted.status_code == 204, deleted.text
    assert user.get(f"/api/v1/lora/{repo_id}").status_code == 404
    assert repo_id not in [lora["name"] for lora in user.get("/api/v1/lora", params={"page_size": 1000}).json()["data"]]
    gone = user.delete(f"/api/v1/lora/{repo_id}", params=WAIT)
    assert gone.status_code == 404 and gone.json()["detail"][0]["loc"] == ["path", "name"]


def test_get_and_delete_of_an_unknown_lora_are_404(user: Api) -> None:
    for answer in (user.get("/api/v1/lora/no-such-lora"), user.delete("/api/v1/lora/no/such-lora")):
        assert answer.status_code == 404, answer.text
        assert answer.json()["detail"][0]["loc"] == ["path", "name"]


def test_a_private_repo_needs_the_right_token(stack: Stack, user: Api, hub_server: FakeHub) -> None:
    token = "hf_" + uuid.uuid4().hex
    hub_server.tokens[token] = "tester"
    hub_server.tokens["hf_" + uuid.uuid4().hex] = "someone-else"  # a token the Hub knows, without access
    repo_id = unique("private-org") + "/secret-lora"
    add_repo(hub_server, repo_id, peft_repo_files(seed=2), private=True, readers={token})

    name = unique("private")
    msg = assert_refused(register(user, model_name=repo_id, name=name), "model_name", repo_id, "hf_token")
    assert "private" in msg
    assert_refused(
        register(user, model_name=repo_id, name=name, hf_token="hf_" + "0" * 32), "hf_token", "token was refused"
    )
    other = next(t for t, who in hub_server.tokens.items() if who == "someone-else")
    assert_refused(register(user, model_name=repo_id, name=name, hf_token=other), "model_name", "no access")
    rejected = adapter_events(stack, name, "adapter.rejected")
    assert [e["payload"]["version"] for e in rejected] == [1, 2, 3]

    answer = register(user, model_name=repo_id, name=name, hf_token=token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 4 and answer.json()["hf_token"] == "hf_****"


def test_a_missing_revision_is_refused_on_hf_revision(stack: Stack, user: Api, hub_server: FakeHub) -> None:
    repo_id = unique("org") + "/revisions"
    add_repo(hub_server, repo_id, peft_repo_files(seed=3))
    name = unique("norev")
    assert_refused(
        register(user, model_name=repo_id, name=name, hf_revision="no-such-branch"),
        "hf_revision",
        "revision no-such-branch not found",
    )
    [rejected] = adapter_events(stack, name, "adapter.rejected")
    assert "no-such-branch" in rejected["payload"]["reason"]
    got = user.get(f"/api/v1/lora/{name}").json()
    assert got["status"] == "rejected" and "no-such-branch" in got["reason"]


def test_a_repo_without_adapter_files_is_refused(stack: Stack, user: Api, hub_server: FakeHub) -> None:
    repo_id = unique("org") + "/not-an-adapter"
    add_repo(hub_server, repo_id, {"README.md": b"# nothing here\n", "config.json": b"{}"})
    name = unique("empty")
    assert_refused(register(user, model_name=repo_id, name=name), "model_name", "no adapter files", "adapter_config")
    assert adapter_events(stack, name, "adapter.rejected")


def test_an_unknown_repo_is_refused(user: Api) -> None:
    repo_id = unique("nobody") + "/nothing"
    assert_refused(register(user, model_name=repo_id), "model_name", repo_id, "not found")


def test_an_adapter_trained_on_another_base_model_is_refused_naming_both(
    stack: Stack, user: Api, hub_server: FakeHub
) -> None:
    repo_id = unique("org") + "/other-base"
    add_repo(hub_server, repo_id, peft_repo_files(seed=4))
    name = unique("mismatch")
    wanted = "meta-llama/Llama-2-7b-chat-hf"
    msg = assert_refused(
        register(user, model_name=repo_id, name=name, base_model_name=wanted), "base_model_name", wanted
    )
    assert TINY_BASE_MODEL in msg
    assert adapter_events(stack, name, "adapter.rejected")


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"model_source": "HF_HUB"}, ["body", "model_name"]),
        ({"model_name": "a/b", "model_source": "GIT"}, ["body", "model_source"]),
        ({"model_name": "a/b"}, ["body", "model_source"]),
        ({"model_name": "a/b", "model_source": "HF_HUB", "colour": "red"}, ["body", "colour"]),
    ],
)
def test_bad_bodies_are_422_on_the_field(user: Api, body: dict[str, Any], loc: list[str]) -> None:
    answer = user.post("/api/v1/lora", json=body, params=WAIT)
    assert answer.status_code == 422, answer.text
    assert loc in [d["loc"] for d in answer.json()["detail"]], answer.json()


def test_an_invalid_name_is_422_on_the_field_it_came_from(user: Api) -> None:
    assert_refused(register(user, model_name="a/b", name="two/slashes/here"), "name", "at most one '/'")
    assert_refused(register(user, model_name="a/b/c"), "model_name", "at most one '/'")


def test_anonymous_callers_are_refused(anonymous: Api) -> None:
    assert anonymous.post("/api/v1/lora", json={"model_name": "a/b", "model_source": "HF_HUB"}).status_code == 401
    assert anonymous.get("/api/v1/lora").status_code == 401
