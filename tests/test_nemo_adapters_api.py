"""Seed 002 over HTTP: files uploaded into a NeMo fileset, then an adapter created from it, validated by the
artifacts agent from the real bytes (a PEFT LoRA written with `safetensors`), stored content-addressed in S3."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from minio import Minio
from safetensors.numpy import save

from infra.s3_objects import stored_home
from tests.support import Api, Stack, events, wait_until

PREFIXES = ("/v2", "/apis/models/v2")
MODEL = "meta/llama-3.2-1b"
HIDDEN = 32
WAIT = {"wait": 60}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def peft_weights(rank: int = 8, modules: tuple[str, ...] = ("q_proj", "v_proj")) -> bytes:
    tensors = {}
    for layer in range(2):
        for module in modules:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.full((rank, HIDDEN), 0.01, dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.full((HIDDEN, rank), layer + 1, dtype=np.float32)
    return save(tensors, metadata={"format": "pt"})


def peft_config(rank: int = 8, base_model: str = MODEL) -> bytes:
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": base_model,
        "task_type": "CAUSAL_LM",
    }
    return json.dumps(config).encode()


def upload(client: Api, workspace: str, fileset: str, filename: str, data: bytes, prefix: str = "/v2") -> Any:
    return client.post(
        f"{prefix}/workspaces/{workspace}/filesets/{fileset}/files",
        params=WAIT,
        files={"file": (filename, data, "application/octet-stream")},
    )


def make_workspace(client: Api) -> str:
    name = unique("nemo")
    created = client.post("/v2/workspaces", params={"wait": 30}, json={"name": name})
    assert created.status_code == 201, created.text
    return name


def make_fileset(client: Api, workspace: str, files: dict[str, bytes]) -> str:
    fileset = unique("files")
    for filename, data in files.items():
        stored = upload(client, workspace, fileset, filename, data)
        assert stored.status_code == 201, stored.text
    return f"{workspace}/{fileset}"


def create_body(name: str, fileset: str, **overrides: Any) -> dict[str, Any]:
    return {"name": name, "fileset": fileset, "finetuning_type": "LORA", "model": MODEL} | overrides


def events_of(stack: Stack, aggregate_id: str) -> list[dict[str, Any]]:
    return [e for e in events(stack) if e["aggregate_id"] == aggregate_id]


@pytest.fixture(scope="module")
def client(stack: Stack, user_key: str) -> Iterator[Api]:
    with Api(stack, user_key) as api:
        api.timeout = 120
        yield api


@pytest.fixture(scope="module")
def workspace(client: Api) -> str:
    return make_workspace(client)


@pytest.fixture(scope="module")
def good_fileset(client: Api, workspace: str) -> str:
    return make_fileset(
        client, workspace, {"adapter_model.safetensors": peft_weights(), "adapter_config.json": peft_config()}
    )


# --- filesets ------------------------------------------------------------------------------------


def test_fileset_files_are_stored_content_addressed(
    stack: Stack, client: Api, workspace: str, s3: Minio, bucket: str
) -> None:
    fileset = unique("files")
    weights, config = peft_weights(rank=4), peft_config(rank=4)
    stored = upload(client, workspace, fileset, "adapter_model.safetensors", weights)
    assert stored.status_code == 201, stored.text
    body = stored.json()
    assert body["path"] == "adapter_model.safetensors" and body["status"] == "stored"
    assert body["size"] == len(weights) and body["sha256"] == hashlib.sha256(weights).hexdigest()
    assert stored.headers["location"] == f"/v2/workspaces/{workspace}/filesets/{fileset}"
    # NeMo's own prefix, and a client that sends a whole path as the file name
    twin = upload(client, workspace, fileset, "some/dir/adapter_config.json", config, prefix="/apis/models/v2")
    assert twin.status_code == 201, twin.text
    assert twin.json()["path"] == "adapter_config.json"

    listing = client.get(f"/v2/workspaces/{workspace}/filesets/{fileset}")
    assert listing.status_code == 200
    assert listing.json()["workspace"] == workspace and listing.json()["name"] == fileset
    files = {f["path"]: f for f in listing.json()["files"]}
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors"]
    assert all(f["status"] == "stored" for f in files.values())
    assert client.get(f"/apis/models/v2/workspaces/{workspace}/filesets/{fileset}").json() == listing.json()
    for data in (weights, config):
        digest = hashlib.sha256(data).hexdigest()
        assert s3.get_object(bucket, home(s3, bucket, digest)).read() == data

    mine = events_of(stack, f"{workspace}/{fileset}")
    assert [e["type"] for e in mine].count("fileset.file_stored") == 2
    assert list(s3.list_objects(bucket, prefix="staging/", recursive=True)) == []  # staged copies removed


def test_a_fileset_file_larger_than_litestars_default_body_limit_streams_through(
    client: Api, workspace: str, s3: Minio, bucket: str
) -> None:
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB: Litestar refuses bodies over 10 MB unless told otherwise
    stored = upload(client, workspace, unique("big"), "big.bin", data)
    assert stored.status_code == 201, stored.text
    digest = hashlib.sha256(data).hexdigest()
    assert stored.json()["sha256"] == digest
    assert s3.stat_object(bucket, home(s3, bucket, digest)).size == len(data)


def test_fileset_upload_refusals(client: Api, workspace: str, s3: Minio, bucket: str) -> None:
    fileset = unique("files")
    base = f"/v2/workspaces/{workspace}/filesets/{fileset}/files"
    for filename in (".hidden.json", "a b.json", "..", "é.json"):
        refused = client.post(base, params=WAIT, files={"file": (filename, b"{}")})
        assert refused.status_code == 422, (filename, refused.text)
        assert refused.json()["detail"][0]["loc"] == ["body", "file"]
    no_file = client.post(base, params=WAIT, files={"other": ("x.json", b"{}")})
    assert no_file.status_code == 422 and no_file.json()["detail"][0]["loc"] == ["body", "file"]
    not_multipart = client.post(base, params=WAIT, json={"file": "x"})
    assert not_multipart.status_code == 422
    bad_fileset = client.post(
        f"/v2/workspaces/{workspace}/filesets/a%20b/files", params=WAIT, files={"file": ("x.json", b"{}")}
    )
    assert bad_fileset.status_code == 422 and bad_fileset.json()["detail"][0]["loc"] == ["path", "fileset"]
    missing_ws = client.post(
        f"/v2/workspaces/{unique('nows')}/filesets/f/files", params=WAIT, files={"file": ("x.json", b"{}")}
    )
    assert missing_ws.status_code == 404 and missing_ws.json()["detail"][0]["loc"] == ["path", "workspace"]
    assert client.get(f"/v2/workspaces/{workspace}/filesets/{fileset}").status_code == 404  # nothing was added
    assert list(s3.list_objects(bucket, prefix="staging/", recursive=True)) == []  # nor left in staging


# --- create: the happy path, and a fileset whose config disagrees with its tensors ------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_create_from_a_fileset_reaches_ready(
    stack: Stack, client: Api, workspace: str, good_fileset: str, prefix: str, s3: Minio, bucket: str
) -> None:
    name = unique("lora")
    body = create_body(name, good_fileset, description="tuned", lora_config={"alpha": 16}, enabled=False)
    created = client.post(f"{prefix}/workspaces/{workspace}/adapters", params=WAIT, json=body)
    assert created.status_code == 201, created.text
    answer = created.json()
    assert {k: answer[k] for k in body} | {"workspace": answer["workspace"]} == {
        "name": name,
        "workspace": workspace,
        "fileset": good_fileset,
        "finetuning_type": "lora",  # sent upper case, answered as NeMo's SDK writes it
        "model": MODEL,
        "description": "tuned",
        "enabled": False,
        "lora_config": {"alpha": 16},
    }
    assert answer["status"] == "ready" and answer["reason"] is None
    assert answer["created_at"] and answer["updated_at"]
    analysis = answer["analysis"]
    assert analysis["rank"] == 8 and analysis["format"] == "peft_llm" and analysis["container"] == "safetensors"
    assert sorted(analysis["target_modules"]) == ["q_proj", "v_proj"]
    assert analysis["lora_alpha"] == 16 and analysis["base_model"] == MODEL
    for other in PREFIXES:
        assert client.get(f"{other}/workspaces/{workspace}/adapters/{name}").json() == answer
    # The version's files are the fileset's blobs, once each in S3.
    for data in (peft_weights(), peft_config()):
        assert s3.stat_object(bucket, home(s3, bucket, hashlib.sha256(data).hexdigest())).size == len(data)
    types = [e["type"] for e in events_of(stack, f"{workspace}/{name}")]
    assert types[0] == "adapter.requested" and types[-1] == "adapter.stored"


def test_a_config_that_disagrees_with_the_tensors_is_rejected(stack: Stack, client: Api, workspace: str) -> None:
    fileset = make_fileset(
        client, workspace, {"adapter_model.safetensors": peft_weights(rank=8), "adapter_config.json": peft_config(16)}
    )
    name = unique("lora")
    refused = client.post(f"/v2/workspaces/{workspace}/adapters", params=WAIT, json=create_body(name, fileset))
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "fileset"]
    assert "rank 8 in the weights, but the config says 16" in error["msg"]
    shown = client.get(f"/v2/workspaces/{workspace}/adapters/{name}").json()
    assert shown["status"] == "rejected" and shown["reason"] == error["msg"] and shown["analysis"] is None
    assert events_of(stack, f"{workspace}/{name}")[-1]["type"] == "adapter.rejected"


def test_a_fileset_without_weights_is_rejected(client: Api, workspace: str) -> None:
    fileset = make_fileset(client, workspace, {"adapter_config.json": peft_config()})
    refused = client.post(
        f"/v2/workspaces/{workspace}/adapters", params=WAIT, json=create_body(unique("lora"), fileset)
    )
    assert refused.status_code == 422 and "no adapter weights" in refused.json()["detail"][0]["msg"]


def test_without_wait_the_create_answers_202_and_the_version_gets_ready(
    client: Api, workspace: str, good_fileset: str
) -> None:
    name = unique("lora")
    accepted = client.post(f"/v2/workspaces/{workspace}/adapters", json=create_body(name, good_fileset))
    assert accepted.status_code == 202 and accepted.json()["status"] == "pending"
    assert accepted.headers["location"] == f"/v2/commands/{accepted.json()['command_id']}"
    shown = wait_until(
        lambda: (
            (r := client.get(f"/v2/workspaces/{workspace}/adapters/{name}")).status_code == 200
            and r.json()["status"] == "ready"
            and r.json()
        ),
        timeout=60,
        message="the adapter to be ready",
    )
    assert shown["analysis"]["rank"] == 8


# --- validation: every limit of the seed ------------------------------------------------------------

VALID_MODEL_127 = f"{'a' * 63}/{'b' * 63}"

INVALID = [
    ({"name": "a b"}, "name"),
    ({"name": "a/b"}, "name"),
    ({"name": "é"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "x" * 256}, "name"),
    ({"name": None}, "name"),
    ({"fileset": "noslash"}, "fileset"),
    ({"fileset": "a/b/c"}, "fileset"),
    ({"fileset": "/b"}, "fileset"),
    ({"fileset": "a b/c"}, "fileset"),
    ({"fileset": f"ws/{'f' * 256}"}, "fileset"),
    ({"finetuning_type": "qlora"}, "finetuning_type"),
    ({"finetuning_type": ""}, "finetuning_type"),
    ({"model": "x" * 128}, "model"),
    ({"model": f"{'a' * 64}/{'b' * 63}"}, "model"),  # 128 characters
    ({"model": "a" * 64}, "model"),  # a name is 2-63 characters
    ({"model": "m"}, "model"),
    ({"model": "Llama"}, "model"),  # lowercase only
    ({"model": "a--b"}, "model"),
    ({"model": "-ab"}, "model"),
    ({"model": "ab-"}, "model"),
    ({"model": "ab/cd/ef"}, "model"),
    ({"model": "/abc"}, "model"),
    ({"model": "abc/"}, "model"),
    ({"model": "ab/c"}, "model"),  # each segment is a valid name, 2 characters at least
    ({"model": "a b"}, "model"),
    ({"model": ""}, "model"),
    ({"description": "d" * 1001}, "description"),
    ({"enabled": "maybe"}, "enabled"),
    ({"lora_config": "r=8"}, "lora_config"),
    ({"unknown_field": 1}, "unknown_field"),
    ({"workspace": "other"}, "workspace"),  # shares its name with the path parameter
]


@pytest.mark.parametrize(("change", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
def test_each_invalid_field_is_a_422_naming_it(
    client: Api, workspace: str, good_fileset: str, change: dict[str, Any], field: str
) -> None:
    body = create_body(unique("lora"), good_fileset) | change
    refused = client.post(f"/v2/workspaces/{workspace}/adapters", params=WAIT, json=body)
    assert refused.status_code == 422, refused.text
    assert [d["loc"] for d in refused.json()["detail"]] == [["body", field]]


@pytest.mark.parametrize("field", ["name", "fileset", "finetuning_type", "model"])
def test_each_required_field(client: Api, workspace: str, good_fileset: str, field: str) -> None:
    body = create_body(unique("lora"), good_fileset)
    del body[field]
    refused = client.post(f"/v2/workspaces/{workspace}/adapters", params=WAIT, json=body)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", field]


VALID_AT_THE_LIMIT = [
    {"name": "x" * 255},
    {"name": "A.b-c_9"},
    {"model": VALID_MODEL_127},
    {"model": "ab"},
    {"model": "team_1/llama-3.1+fp8@v2"},
    {"description": "d" * 1000},
    {"finetuning_type": "p_tuning"},
    {"finetuning_type": "ALL_WEIGHTS"},
]


@pytest.mark.parametrize("change", VALID_AT_THE_LIMIT, ids=lambda c: next(iter(c)))
def test_values_at_the_limits_pass_validation(client: Api, workspace: str, change: dict[str, Any]) -> None:
    # An empty fileset is the one refusal left: it shows every other field passed.
    body = create_body(unique("lora"), f"{workspace}/{unique('empty')}") | change
    refused = client.post(f"/v2/workspaces/{workspace}/adapters", params=WAIT, json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == [
        {
            "loc": ["body", "fileset"],
            "msg": f"fileset {body['fileset']!r} holds no stored files; upload the adapter's files to it first",
            "type": "invalid",
        }
    ]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_missing_workspace_is_404(client: Api, good_fileset: str, prefix: str) -> None:
    missing = unique("nows")
    answer = client.post(
        f"{prefix}/workspaces/{missing}/adapters", params=WAIT, json=create_body(unique("lora"), good_fileset)
    )
    assert answer.status_code == 404
    assert answer.json()["detail"] == [
        {"loc": ["path", "workspace"], "msg": f"workspace {missing!r} does not exist", "type": "not_found"}
    ]
    assert client.get(f"{prefix}/workspaces/{missing}/adapters").status_code == 404
    assert client.get(f"{prefix}/workspaces/{missing}/adapters/x").status_code == 404
    assert client.patch(f"{prefix}/workspaces/{missing}/adapters/x", json={"enabled": True}).status_code == 404
    assert client.delete(f"{prefix}/workspaces/{missing}/adapters/x").status_code == 404


# --- names: 409, and one winner under concurrency --------------------------------------------------


def test_a_taken_name_is_409(client: Api, workspace: str, good_fileset: str) -> None:
    name = unique("lora")
    url = f"/v2/workspaces/{workspace}/adapters"
    assert client.post(url, params=WAIT, json=create_body(name, good_fileset)).status_code == 201
    again = client.post(f"/apis/models{url}", params=WAIT, json=create_body(name, good_fileset))
    assert again.status_code == 409
    assert again.json()["detail"] == [
        {
            "loc": ["body", "name"],
            "msg": f"adapter {name!r} already exists in workspace {workspace!r}",
            "type": "conflict",
        }
    ]


def test_concurrent_creates_of_one_name_exactly_one_wins(
    stack: Stack, user_key: str, workspace: str, good_fileset: str
) -> None:
    name = unique("race")

    def create(i: int) -> int:
        with Api(stack, user_key) as api:
            api.timeout = 120
            body = create_body(name, good_fileset, description=f"attempt {i}")
            prefix = PREFIXES[i % 2]
            return api.post(f"{prefix}/workspaces/{workspace}/adapters", params=WAIT, json=body).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(create, range(8)))
    assert sorted(codes) == [201] + [409] * 7, codes
    with Api(stack, user_key) as api:
        requested = [e for e in events(stack) if e["aggregate_id"] == f"{workspace}/{name}"]
        assert [e["type"] for e in requested].count("adapter.requested") == 1
        assert [e["type"] for e in requested].count("command.rejected") == 7
        assert api.get(f"/v2/workspaces/{workspace}/adapters/{name}").json()["status"] == "ready"


# --- update, delete, list -------------------------------------------------------------------------


def test_patch_changes_only_what_is_sent_then_delete(
    stack: Stack, client: Api, workspace: str, good_fileset: str
) -> None:
    name = unique("lora")
    nemo = f"/apis/models/v2/workspaces/{workspace}/adapters"
    created = client.post(
        nemo, params=WAIT, json=create_body(name, good_fileset, description="one", lora_config={"a": 1})
    )
    assert created.status_code == 201, created.text
    first = created.json()

    patched = client.patch(f"{nemo}/{name}", params=WAIT, json={"enabled": False})
    assert patched.status_code == 200, patched.text
    assert patched.json() == first | {"enabled": False, "updated_at": patched.json()["updated_at"]}
    assert patched.json()["updated_at"] > first["updated_at"]
    again = client.patch(
        f"/v2/workspaces/{workspace}/adapters/{name}", params=WAIT, json={"description": "two", "lora_config": {"b": 2}}
    )
    assert again.status_code == 200
    body = again.json()
    assert (body["description"], body["enabled"], body["lora_config"]) == ("two", False, {"b": 2})
    assert (body["fileset"], body["model"], body["status"]) == (good_fileset, MODEL, "ready")
    assert client.get(f"{nemo}/{name}").json() == body

    for bad, field in (
        ({"description": "d" * 1001}, "description"),
        ({"name": "x"}, "name"),
        ({"enabled": 3}, "enabled"),
    ):
        refused = client.patch(f"{nemo}/{name}", params=WAIT, json=bad)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", field], refused.text

    deleted = client.delete(f"{nemo}/{name}", params=WAIT)
    assert deleted.status_code == 204, deleted.text
    assert client.get(f"/v2/workspaces/{workspace}/adapters/{name}").status_code == 404
    gone = client.patch(f"{nemo}/{name}", params=WAIT, json={"enabled": True})
    assert gone.status_code == 404 and gone.json()["detail"][0]["loc"] == ["path", "name"]
    assert client.delete(f"{nemo}/{name}", params=WAIT).status_code == 404
    # The name is free again, for a new version with fresh fields.
    recreated = client.post(nemo, params=WAIT, json=create_body(name, good_fileset))
    assert recreated.status_code == 201
    assert (recreated.json()["description"], recreated.json()["enabled"]) == (None, True)
    types = [e["type"] for e in events_of(stack, f"{workspace}/{name}")]
    assert types.count("adapter.updated") == 2 and types.count("adapter.deleted") == 1
    assert types.count("adapter.requested") == 2


def test_list_paginates_and_filters(client: Api, good_fileset: str) -> None:
    workspace = make_workspace(client)
    names = [unique(f"l{i}") for i in range(3)]
    for i, name in enumerate(names):
        body = create_body(name, good_fileset, enabled=i != 1, finetuning_type="lora" if i < 2 else "LORA")
        assert client.post(f"/v2/workspaces/{workspace}/adapters", params=WAIT, json=body).status_code == 201
    url = f"/apis/models/v2/workspaces/{workspace}/adapters"
    page = client.get(url, params={"page_size": 2}).json()
    assert page["object"] == "list"
    assert page["pagination"] == {
        "page": 1,
        "page_size": 2,
        "current_page_size": 2,
        "total_pages": 2,
        "total_results": 3,
    }
    second = client.get(url, params={"page_size": 2, "page": 2}).json()
    assert [a["name"] for a in page["data"] + second["data"]] == names  # oldest first
    disabled = client.get(url, params={"enabled": "false"}).json()
    assert [a["name"] for a in disabled["data"]] == [names[1]]
    assert client.get(url, params={"finetuning_type": "LORA"}).json()["pagination"]["total_results"] == 3
    assert client.get(url, params={"finetuning_type": "p_tuning"}).json()["data"] == []
    assert client.get(url, params={"model": MODEL}).json()["pagination"]["total_results"] == 3
    assert client.get(url, params={"model": "other/model"}).json()["data"] == []
    unknown = client.get(url, params={"finetuning_type": "qlora"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["query", "finetuning_type"]
    assert client.get(url, params={"page": 0}).status_code == 422


def home(s3: Minio, bucket: str, sha256: str) -> str:
    """The object holding these bytes (an upload is stored where it was streamed: infra.s3_objects)."""
    key = stored_home(s3, bucket, sha256)
    assert key is not None, f"no object holds {sha256}"
    return key
