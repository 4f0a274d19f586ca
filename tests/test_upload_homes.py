"""Where stored bytes live (infra.s3_objects, infra.staging), against the stack's real S3: an upload stays where it
was streamed and claims its sha256; equal bytes find that home; a claim holds against a later content address and
is taken over only when its object is gone; discarding never removes a home."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import pytest
from minio import Minio

from infra.s3 import make_client
from infra.s3_objects import (
    NoLongerStored,
    claim_key,
    is_claimed_by,
    object_exists,
    settle_upload,
    store_blob_from_file,
    stored_home,
)
from infra.settings import Settings
from infra.staging import discard_staged, mark_staged, new_upload_key, release_staged, staging_marker
from streams.artifacts import blob_key
from tests.support import Stack


@pytest.fixture(scope="module")
def s3(stack: Stack) -> Minio:
    env = stack.cli_env()
    overrides = {"s3_endpoint": env["S3_ENDPOINT"]}
    for name, field in (("S3_ACCESS_KEY", "s3_access_key"), ("S3_SECRET_KEY", "s3_secret_key")):
        if name in env:
            overrides[field] = env[name]
    return make_client(Settings.model_validate(overrides))


@pytest.fixture(scope="module")
def bucket(stack: Stack) -> str:
    return stack.cli_env().get("S3_BUCKET", "loraplane")


def staged(s3: Minio, bucket: str, data: bytes) -> str:
    key = new_upload_key()
    mark_staged(s3, bucket, key)
    s3.put_object(bucket, key, io.BytesIO(data), len(data))
    return key


def fresh() -> tuple[bytes, str]:
    data = f"bytes {uuid.uuid4()}".encode()
    return data, hashlib.sha256(data).hexdigest()


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
