"""Where stored bytes live (infra.s3_objects, infra.staging), against the stack's real S3: an upload stays where it
was streamed and claims its sha256; equal bytes find that home; a claim holds against a later content address and
is taken over only when its object is gone; discarding never removes a home."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from infra.s3_objects import (
    NoLongerStored,
    claim_key,
    is_claimed_by,
    object_exists,
    remove_quietly,
    settle_upload,
    store_blob_from_file,
    stored_home,
)
from infra.staging import (
    STAGING_PREFIX,
    UPLOADS_PREFIX,
    discard_staged,
    mark_staged,
    new_upload_key,
    release_staged,
    staging_marker,
)
from streams.artifacts import blob_key
from tests.support import Api

_made: list[str] = []  # what a test wrote: removed after it, so the stack's bucket is left as it was found


@pytest.fixture(autouse=True)
def remove_what_was_made(s3: Minio, bucket: str) -> Iterator[None]:
    yield
    while _made:
        remove_quietly(s3, bucket, _made.pop())


def staged(s3: Minio, bucket: str, data: bytes) -> str:
    key = new_upload_key()
    _made.extend([key, staging_marker(key)])
    mark_staged(s3, bucket, key)
    s3.put_object(bucket, key, io.BytesIO(data), len(data))
    return key


def fresh() -> tuple[bytes, str]:
    data = f"bytes {uuid.uuid4()}".encode()
    digest = hashlib.sha256(data).hexdigest()
    _made.extend([claim_key(digest), blob_key(digest)])
    return data, digest


def uploads_and_markers(s3: Minio, bucket: str) -> set[str]:
    return {
        o.object_name or ""
        for prefix in (STAGING_PREFIX, UPLOADS_PREFIX)
        for o in s3.list_objects(bucket, prefix=prefix, recursive=True)
    }


def test_the_first_upload_is_the_home_and_equal_bytes_point_at_it(s3: Minio, bucket: str) -> None:
    data, digest = fresh()
    first, second = staged(s3, bucket, data), staged(s3, bucket, data)
    assert stored_home(s3, bucket, digest) is None
    assert settle_upload(s3, bucket, first, digest) == first
    assert settle_upload(s3, bucket, first, digest) == first  # a job run again keeps its claim
    assert settle_upload(s3, bucket, second, digest) == first
    assert stored_home(s3, bucket, digest) == first and is_claimed_by(s3, bucket, first, digest)
    release_staged(s3, bucket, first)
    assert not object_exists(s3, bucket, staging_marker(first)) and object_exists(s3, bucket, first)


def test_a_claim_holds_against_a_content_address_written_later(s3: Minio, bucket: str) -> None:
    """A download that wrote the content address while an upload's job claimed (or after it): the claimed upload
    stays the home its names point at; a later upload uses whichever home exists."""
    data, digest = fresh()
    upload = staged(s3, bucket, data)
    assert settle_upload(s3, bucket, upload, digest) == upload
    s3.put_object(bucket, blob_key(digest), io.BytesIO(data), len(data))
    assert settle_upload(s3, bucket, upload, digest) == upload
    assert stored_home(s3, bucket, digest) == blob_key(digest)  # either holds the bytes; nothing is removed


def test_downloaded_bytes_are_the_home_of_a_later_upload_and_an_upload_of_a_later_download(
    s3: Minio, bucket: str, tmp_path: Path
) -> None:
    data, digest = fresh()
    local = tmp_path / "weights"
    local.write_bytes(data)
    assert store_blob_from_file(s3, bucket, local, digest) == blob_key(digest)
    assert settle_upload(s3, bucket, staged(s3, bucket, data), digest) == blob_key(digest)

    data, digest = fresh()
    local.write_bytes(data)
    upload = staged(s3, bucket, data)
    assert settle_upload(s3, bucket, upload, digest) == upload
    assert store_blob_from_file(s3, bucket, local, digest) == upload
    assert not object_exists(s3, bucket, blob_key(digest))  # not written a second time


def test_a_claim_whose_object_is_gone_is_taken_over(s3: Minio, bucket: str) -> None:
    data, digest = fresh()
    gone = staged(s3, bucket, data)
    assert settle_upload(s3, bucket, gone, digest) == gone
    s3.remove_object(bucket, gone)  # the sweep removed it a day later, say
    assert stored_home(s3, bucket, digest) is None
    taker = staged(s3, bucket, data)
    assert settle_upload(s3, bucket, taker, digest) == taker
    assert stored_home(s3, bucket, digest) == taker


def test_an_upload_removed_before_it_is_settled_is_no_home(s3: Minio, bucket: str) -> None:
    data, digest = fresh()
    key = staged(s3, bucket, data)
    s3.remove_object(bucket, key)
    with pytest.raises(NoLongerStored):
        settle_upload(s3, bucket, key, digest)
    s3.remove_object(bucket, claim_key(digest))


def test_discarding_removes_an_upload_and_its_marker_but_never_a_home(s3: Minio, bucket: str) -> None:
    data, digest = fresh()
    refused = staged(s3, bucket, data)
    discard_staged(s3, bucket, refused, digest)
    assert not object_exists(s3, bucket, refused) and not object_exists(s3, bucket, staging_marker(refused))

    home = staged(s3, bucket, data)
    assert settle_upload(s3, bucket, home, digest) == home
    discard_staged(s3, bucket, home, digest)  # a run that claimed, then failed for good
    assert object_exists(s3, bucket, home) and not object_exists(s3, bucket, staging_marker(home))


def test_an_evaluation_dataset_is_still_read_at_its_content_address(admin: Api, s3: Minio, bucket: str) -> None:
    """Datasets are streamed like uploads, then written to their content address (their id is the sha256): the
    upload and its marker are removed, whether the dataset is kept or refused."""
    before = uploads_and_markers(s3, bucket)
    good = "".join(json.dumps({"prompt": f"p{i} {uuid.uuid4()}", "reference": "r"}) + "\n" for i in range(3)).encode()
    answer = admin.post("/api/v1/evaluation/datasets", files={"file": ("good.jsonl", good, "application/jsonl")})
    assert answer.status_code == 201, answer.text
    digest = answer.json()["dataset_id"]
    _made.append(blob_key(digest))
    assert digest == hashlib.sha256(good).hexdigest() and object_exists(s3, bucket, blob_key(digest))
    refused = admin.post("/api/v1/evaluation/datasets", files={"file": ("bad.jsonl", b"{", "application/jsonl")})
    assert refused.status_code == 422, refused.text
    assert uploads_and_markers(s3, bucket) - before == set()
