"""Seed 004 over HTTP with real files: upload (streamed to S3), validation by content, versioning,
content-addressed storage, the bin, restore, limits and rights."""

from __future__ import annotations

import concurrent.futures
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from minio import Minio

from api.uploads import PART_SIZE
from infra.faults import arm
from infra.s3_objects import CLAIMS_PREFIX, read_object, stored_home
from infra.staging import STAGING_PREFIX, UPLOADS_PREFIX
from streams.artifacts import blob_key
from tests.artifacts import (
    code_running_pickle,
    kohya_lora,
    malformed_safetensors_header,
    torch_lora_checkpoint,
    truncated,
    write_large_kohya_lora,
)
from tests.support import Api, Stack, wait_until

ADMIN_UPLOAD = "/api/v1/admin/lora/upload"
USER_UPLOAD = "/api/v1/lora/upload"
FILES = "/api/v1/admin/lora"


@pytest.fixture(autouse=True)
def staging_empty_after(s3: Minio, bucket: str) -> Iterator[None]:
    yield
    left = [o.object_name for o in s3.list_objects(bucket, prefix=STAGING_PREFIX, recursive=True)]
    assert left == [], f"staged objects left behind: {left}"
    assert unclaimed_uploads(s3, bucket) == [], "uploads no name points at were kept"


def unclaimed_uploads(s3: Minio, bucket: str) -> list[str]:
    """Uploads kept in `blobs/uploads/` that are no home of their bytes (every stored upload is one: a duplicate is
    removed, a refused one too)."""
    homes = {
        read_object(s3, bucket, o.object_name).decode()
        for o in s3.list_objects(bucket, prefix=CLAIMS_PREFIX, recursive=True)
        if o.object_name
    }
    kept = {o.object_name for o in s3.list_objects(bucket, prefix=UPLOADS_PREFIX, recursive=True) if o.object_name}
    return sorted(kept - homes)


def unique(stem: str = "lora") -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def upload(client: Api, filename: str, data: bytes, path: str = ADMIN_UPLOAD, **fields: str | bool) -> httpx.Response:
    form = {k: str(v).lower() if isinstance(v, bool) else v for k, v in fields.items()}
    return client.post(path, files={"file": (filename, data, "application/octet-stream")}, data=form, timeout=120)


def listed(client: Api, entity_type: str) -> dict[str, dict[str, Any]]:
    body = client.get(FILES, params={"entity_type": entity_type, "page_size": 1000}).json()
    return {item["partial_path"]: item for item in body["data"]}


def detail(response: httpx.Response) -> dict[str, Any]:
    items = response.json()["detail"]
    assert len(items) == 1, items
    return items[0]


def home_of(s3: Minio, bucket: str, sha256: str) -> str:
    home = stored_home(s3, bucket, sha256)
    assert home is not None, f"no object holds {sha256}"
    return home


def blob_bytes(s3: Minio, bucket: str, sha256: str) -> bytes:
    return read_object(s3, bucket, home_of(s3, bucket, sha256))


def test_kohya_safetensors_is_stored_content_addressed_and_listed(admin: Api, s3: Minio, bucket: str) -> None:
    data = kohya_lora(seed=1)
    name = f"{unique()}.safetensors"
    answer = upload(admin, name, data, entity_type="identities")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"file_path", "partial_path", "filename", "file_size", "entity_type", "upload_timestamp"}
    assert body["partial_path"] == f"identities/{name}"
    assert body["file_path"] == f"/data/models/loras/identities/{name}"
    assert body["filename"] == name and body["entity_type"] == "identities"
    assert body["file_size"] == len(data)
    assert body["upload_timestamp"].endswith("Z")

    item = listed(admin, "identities")[body["partial_path"]]
    digest = hashlib.sha256(data).hexdigest()
    assert item["sha256"] == digest and item["file_size"] == len(data)
    home = home_of(s3, bucket, digest)
    assert home.startswith(UPLOADS_PREFIX)  # stored where the API streamed it: no copy
    assert blob_bytes(s3, bucket, digest) == data


def test_torch_checkpoint_on_the_user_route_defaults_the_entity_type(user: Api, admin: Api) -> None:
    data = torch_lora_checkpoint(seed=2)
    name = f"{unique()}.pt"
    answer = upload(user, name, data, path=USER_UPLOAD)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "entity_type" not in body  # the user route's answer has no entity_type (seed)
    assert body["partial_path"] == f"no_type_provided/{name}" and body["file_size"] == len(data)
    assert body["partial_path"] in listed(admin, "no_type_provided")


@pytest.mark.parametrize(
    ("suffix", "make", "reason"),
    [
        (".safetensors", lambda _: malformed_safetensors_header(), "header"),
        (".safetensors", lambda _: truncated(kohya_lora(seed=3)), ""),
        (".bin", lambda _: b"just some bytes, not a model" * 10, ""),
        (".pt", code_running_pickle, "posix"),
    ],
    ids=["malformed-header", "truncated", "not-a-model", "code-running-pickle"],
)
def test_content_decides_and_refused_files_are_not_kept(
    admin: Api, tmp_path: Path, s3: Minio, bucket: str, suffix: str, make: Any, reason: str
) -> None:
    marker = tmp_path / "pwned"
    data = make(marker)
    name = f"{unique()}{suffix}"
    answer = upload(admin, name, data, entity_type="styles")
    assert answer.status_code == 422, answer.text
    problem = detail(answer)
    assert problem["loc"] == ["body", "file"]
    assert reason.lower() in problem["msg"].lower()
    assert not marker.exists(), "the pickle was loaded: it ran code"
    assert f"styles/{name}" not in listed(admin, "styles")
    digest = hashlib.sha256(data).hexdigest()
    assert stored_home(s3, bucket, digest) is None, "refused bytes were stored"
    assert not list(s3.list_objects(bucket, prefix=blob_key(digest)))
    # the name was freed: a valid file takes it
    again = upload(admin, name.rsplit(".", 1)[0] + ".safetensors", kohya_lora(seed=4), entity_type="styles")
    assert again.status_code == 200, again.text


def test_the_same_bytes_under_the_same_name_again_after_a_delete_or_a_refusal(admin: Api) -> None:
    """Each upload is a new job whose reports are its own: a second upload of identical bytes under an identical
    name is stored (or refused) again, never left `validating` because its reports look like the first job's."""
    name = f"{unique()}.safetensors"
    path = f"styles/{name}"
    data = kohya_lora(seed=41)
    for _ in range(2):
        stored = upload(admin, name, data, entity_type="styles")
        assert stored.status_code == 200, stored.text
        assert stored.json()["partial_path"] == path
        assert admin.request("DELETE", FILES, json={"partial_path": path}).status_code == 200
    assert path not in listed(admin, "styles")

    refused_name = f"{unique()}.safetensors"
    bad = malformed_safetensors_header()
    for _ in range(2):
        refused = upload(admin, refused_name, bad, entity_type="styles")
        assert refused.status_code == 422, refused.text
        assert detail(refused)["loc"] == ["body", "file"]
    assert f"styles/{refused_name}" not in listed(admin, "styles")


@pytest.mark.parametrize(
    ("filename", "words"),
    [
        ("notes.txt", "extension"),
        ("weights", "extension"),
        ("../escape.safetensors", ".."),
        ("bad\nname.safetensors", "control"),  # httpx sends %0A, read back as a newline
        (".hidden.safetensors", "dot"),
    ],
)
def test_bad_file_names_are_refused_before_storing(admin: Api, filename: str, words: str) -> None:
    answer = upload(admin, filename, kohya_lora())
    assert answer.status_code == 422, answer.text
    problem = detail(answer)
    assert problem["loc"] == ["body", "file"] and words in problem["msg"]


def test_form_problems(admin: Api, user: Api) -> None:
    missing = admin.post(ADMIN_UPLOAD, files={"entity_type": (None, "styles")})
    assert missing.status_code == 422 and detail(missing)["loc"] == ["body", "file"]
    not_form = admin.post(ADMIN_UPLOAD, json={"file": "x"})
    assert not_form.status_code == 422
    unknown = upload(admin, "a.safetensors", kohya_lora(), entity_type="animals")
    assert unknown.status_code == 422 and detail(unknown)["loc"] == ["body", "entity_type"]
    faces = upload(user, "a.safetensors", kohya_lora(), path=USER_UPLOAD, entity_type="faces")
    assert faces.status_code == 422 and detail(faces)["loc"] == ["body", "entity_type"]
    flag = upload(admin, "a.safetensors", kohya_lora(), use_safe_filename="maybe")
    assert flag.status_code == 422 and detail(flag)["loc"] == ["body", "use_safe_filename"]


def test_faces_is_an_admin_entity_type(admin: Api) -> None:
    answer = upload(admin, f"{unique()}.safetensors", kohya_lora(seed=5), entity_type="faces")
    assert answer.status_code == 200, answer.text
    assert answer.json()["entity_type"] == "faces"


def test_taken_names_are_versioned_or_refused(admin: Api) -> None:
    stem = unique("x")
    names = [upload(admin, f"{stem}.safetensors", kohya_lora(seed=6), entity_type="clothes") for _ in range(3)]
    assert [a.status_code for a in names] == [200, 200, 200], [a.text for a in names]
    assert [a.json()["filename"] for a in names] == [
        f"{stem}.safetensors",
        f"{stem}_v2.safetensors",
        f"{stem}_v3.safetensors",
    ]
    refused = upload(admin, f"{stem}.safetensors", kohya_lora(seed=6), entity_type="clothes", use_safe_filename=False)
    assert refused.status_code == 409, refused.text
    assert detail(refused)["loc"] == ["body", "file"] and "already exists" in detail(refused)["msg"]
    free = upload(admin, f"{stem}_v9.safetensors", kohya_lora(seed=6), entity_type="clothes", use_safe_filename=False)
    assert free.status_code == 200 and free.json()["filename"] == f"{stem}_v9.safetensors"


def test_concurrent_uploads_of_one_name_get_distinct_names(admin: Api, tmp_path: Path) -> None:
    # Files of several MiB, so every upload waits on S3 while the others stream: none may starve another.
    path = tmp_path / "concurrent.safetensors"
    write_large_kohya_lora(path, 12 * 1024 * 1024)
    data = path.read_bytes()
    stem = unique("same")
    count = 8
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        answers = list(
            pool.map(lambda _: upload(admin, f"{stem}.safetensors", data, entity_type="product"), range(count))
        )
    assert [a.status_code for a in answers] == [200] * count, [a.text for a in answers]
    names = {a.json()["filename"] for a in answers}
    expected = {f"{stem}.safetensors", *(f"{stem}_v{n}.safetensors" for n in range(2, count + 1))}
    assert names == expected
    assert expected <= {p.split("/", 1)[1] for p in listed(admin, "product")}


def test_same_bytes_twice_are_one_object(admin: Api, s3: Minio, bucket: str) -> None:
    data = kohya_lora(seed=7, rank=8)
    digest = hashlib.sha256(data).hexdigest()
    first = upload(admin, f"{unique()}.safetensors", data, entity_type="styles")
    second = upload(admin, f"{unique()}.safetensors", data, entity_type="identities")
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    holding = [
        o.object_name
        for o in s3.list_objects(bucket, prefix="blobs/", recursive=True)
        if o.object_name and o.size == len(data) and read_object(s3, bucket, o.object_name) == data
    ]
    assert holding == [home_of(s3, bucket, digest)]


def test_same_bytes_under_several_names_at_once_are_one_object(admin: Api, s3: Minio, bucket: str) -> None:
    """Jobs of four directories store equal bytes at the same time: one claim wins, the others point at it."""
    data = kohya_lora(seed=70, rank=8)
    digest = hashlib.sha256(data).hexdigest()
    entity_types = ["styles", "identities", "product", "no_type_provided"]
    with concurrent.futures.ThreadPoolExecutor(len(entity_types)) as pool:
        answers = list(
            pool.map(lambda e: upload(admin, f"{unique('twin')}.safetensors", data, entity_type=e), entity_types)
        )
    assert [a.status_code for a in answers] == [200] * len(entity_types), [a.text for a in answers]
    home = home_of(s3, bucket, digest)
    holding = [
        o.object_name
        for o in s3.list_objects(bucket, prefix="blobs/", recursive=True)
        if o.object_name and o.size == len(data) and read_object(s3, bucket, o.object_name) == data
    ]
    assert holding == [home]


@pytest.mark.parametrize("again", [False, True], ids=["first-copy", "equal-bytes-stored-before"])
def test_a_worker_crash_between_storing_an_upload_and_reporting_it_loses_nothing(
    stack: Stack, admin: Api, s3: Minio, bucket: str, again: bool
) -> None:
    """The worker dies once the upload is stored in place (or, for bytes stored before, once it is removed) and
    before the report: the restarted worker runs the job again, finds the bytes, and stores the file once."""
    data = kohya_lora(seed=71 + int(again), rank=4)
    digest = hashlib.sha256(data).hexdigest()
    if again:
        assert upload(admin, f"{unique('before')}.safetensors", data, entity_type="identities").status_code == 200
    name = f"{unique('crash')}.safetensors"
    worker = stack.pids()["worker"]
    arm(stack.data_dir, "upload_stored", name)
    accepted = admin.post(
        ADMIN_UPLOAD, params={"wait": 0}, files={"file": (name, data)}, data={"entity_type": "styles"}, timeout=120
    )
    assert accepted.status_code == 202, accepted.text
    wait_until(lambda: stack.pids().get("worker") not in (None, worker), timeout=60, message="the worker to crash")
    assert not (stack.data_dir / "faults" / "upload_stored").exists(), "the crash point was never reached"
    stored = wait_until(lambda: listed(admin, "styles").get(f"styles/{name}"), timeout=120, message="the file stored")
    assert stored["sha256"] == digest
    assert blob_bytes(s3, bucket, digest) == data
    holding = [
        o.object_name
        for o in s3.list_objects(bucket, prefix="blobs/", recursive=True)
        if o.object_name and o.size == len(data) and read_object(s3, bucket, o.object_name) == data
    ]
    assert holding == [home_of(s3, bucket, digest)]


def test_delete_to_the_bin_and_restore(admin: Api) -> None:
    name = f"{unique()}.safetensors"
    path = f"styles/{name}"
    assert upload(admin, name, kohya_lora(seed=8), entity_type="styles").status_code == 200

    deleted = admin.request("DELETE", FILES, json={"partial_path": path})
    assert deleted.status_code == 200, deleted.text
    body = deleted.json()
    assert body["deleted"] is True
    assert body["full_path"] == f"/data/models/loras/{path}"
    assert body["bin_path"] == f"/data/bin/models/loras/{path}"
    assert body["timestamp"].endswith("Z")
    assert path not in listed(admin, "styles")
    again = admin.request("DELETE", FILES, json={"partial_path": path})
    assert again.status_code == 404 and detail(again)["loc"] == ["body", "partial_path"]

    restored = admin.post(f"{FILES}/restore", json={"partial_path": path})
    assert restored.status_code == 200, restored.text
    assert restored.json()["partial_path"] == path and restored.json()["entity_type"] == "styles"
    assert path in listed(admin, "styles")
    empty_bin = admin.post(f"{FILES}/restore", json={"partial_path": path})
    assert empty_bin.status_code == 404

    # deleted, then the name taken again: the binned copy cannot come back over it
    assert admin.request("DELETE", FILES, json={"partial_path": path}).status_code == 200
    assert upload(admin, name, kohya_lora(seed=9), entity_type="styles").json()["partial_path"] == path
    taken = admin.post(f"{FILES}/restore", json={"partial_path": path})
    assert taken.status_code == 409 and detail(taken)["loc"] == ["body", "partial_path"]


@pytest.mark.parametrize("partial_path", ["noslash.safetensors", "animals/a.safetensors", "styles/a/b.safetensors", ""])
def test_malformed_partial_paths(admin: Api, partial_path: str) -> None:
    for method, url in (("DELETE", FILES), ("POST", f"{FILES}/restore")):
        answer = admin.request(method, url, json={"partial_path": partial_path})
        assert answer.status_code == 422, answer.text
        assert detail(answer)["loc"] == ["body", "partial_path"]


def test_list_filters_and_pages(admin: Api) -> None:
    stem = unique("page")
    for i in range(3):
        assert (
            upload(admin, f"{stem}-{i}.safetensors", kohya_lora(seed=20 + i), entity_type="product").status_code == 200
        )
    total = admin.get(FILES, params={"entity_type": "product", "page_size": 1}).json()["pagination"]["total_results"]
    assert total >= 3
    pages = [admin.get(FILES, params={"entity_type": "product", "page_size": 1, "page": p}).json() for p in (1, 2)]
    assert all(len(p["data"]) == 1 and p["pagination"]["total_pages"] == total for p in pages)
    assert pages[0]["data"][0]["partial_path"] != pages[1]["data"][0]["partial_path"]
    assert all(
        i["entity_type"] == "product" for i in admin.get(FILES, params={"entity_type": "product"}).json()["data"]
    )
    assert admin.get(FILES, params={"entity_type": "animals"}).status_code == 422


def test_user_keys_cannot_use_admin_routes(user: Api, anonymous: Api) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", ADMIN_UPLOAD, {"files": {"file": ("a.safetensors", kohya_lora())}}),
        ("GET", FILES, {}),
        ("DELETE", FILES, {"json": {"partial_path": "styles/a.safetensors"}}),
        ("POST", f"{FILES}/restore", {"json": {"partial_path": "styles/a.safetensors"}}),
    ]
    for method, url, kwargs in calls:
        assert user.request(method, url, **kwargs).status_code == 403, url
        assert anonymous.request(method, url, **kwargs).status_code == 401, url
    assert anonymous.post(USER_UPLOAD, files={"file": ("a.safetensors", kohya_lora())}).status_code == 401


def test_a_file_of_several_s3_parts_streams_through(admin: Api, tmp_path: Path, s3: Minio, bucket: str) -> None:
    path = tmp_path / "big.safetensors"
    size = write_large_kohya_lora(path, 3 * PART_SIZE + 12345)  # several parts, over Litestar's 10 MB default
    name = f"{unique()}.safetensors"
    with path.open("rb") as file:  # httpx streams an open file in pieces
        answer = admin.post(ADMIN_UPLOAD, files={"file": (name, file)}, data={"entity_type": "identities"}, timeout=300)
    assert answer.status_code == 200, answer.text
    assert answer.json()["file_size"] == size
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert listed(admin, "identities")[f"identities/{name}"]["sha256"] == digest
    assert s3.stat_object(bucket, home_of(s3, bucket, digest)).size == size


def test_the_upload_body_is_documented(anonymous: Api) -> None:
    paths = anonymous.get("/schema/openapi.json").json()["paths"]
    for route, faces in ((ADMIN_UPLOAD, True), (USER_UPLOAD, False)):
        schema = paths[route]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert schema["required"] == ["file"] and schema["properties"]["file"]["format"] == "binary"
        assert ("faces" in schema["properties"]["entity_type"]["enum"]) is faces
    assert set(paths[FILES]) == {"get", "delete"}


def test_without_waiting_the_upload_answers_202_and_completes(admin: Api) -> None:
    name = f"{unique()}.safetensors"
    accepted = admin.post(
        ADMIN_UPLOAD, params={"wait": 0}, files={"file": (name, kohya_lora(seed=30))}, data={"entity_type": "styles"}
    )
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]
    assert location == f"/v2/commands/{accepted.json()['command_id']}"
    done = wait_until(lambda: (s := admin.get(location).json())["status"] != "pending" and s, message="outcome")
    assert done["status"] == "succeeded" and done["event_type"] == "lora_file.reserved"
    wait_until(lambda: f"styles/{name}" in listed(admin, "styles"), message="the file to be stored")


def test_an_upload_answered_202_and_then_refused_leaves_nothing_in_staging(admin: Api, s3: Minio, bucket: str) -> None:
    name = f"{unique()}.safetensors"
    assert upload(admin, name, kohya_lora(seed=31), entity_type="styles").status_code == 200
    accepted = admin.post(
        ADMIN_UPLOAD,
        params={"wait": 0},
        files={"file": (name, kohya_lora(seed=32))},
        data={"entity_type": "styles", "use_safe_filename": "false"},
    )
    assert accepted.status_code == 202, accepted.text  # answered before the agent saw the name is taken
    location = accepted.headers["location"]
    done = wait_until(lambda: (s := admin.get(location).json())["status"] != "pending" and s, message="outcome")
    assert done["status"] == "rejected" and done["code"] == "conflict"
    # no job takes refused bytes: the agent removes them (the autouse check would fail otherwise)
    wait_until(
        lambda: not list(s3.list_objects(bucket, prefix="staging/", recursive=True)),
        timeout=30,
        message="the refused upload's staged bytes to be removed",
    )
