"""The 500 MiB limit is enforced while the body streams: the API answers 413 and closes the connection
after about the limit, without reading the rest, and leaves nothing in S3's staging area."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from infra.s3 import make_client
from infra.settings import Settings
from streams.naming import MAX_UPLOAD_BYTES
from tests.artifacts import large_kohya_lora
from tests.support import Stack

MiB = 1024 * 1024
OVER = 200 * MiB  # sent beyond the limit, if the server let it
BOUNDARY = "lp-boundary-7d0f3c"


def body() -> Iterator[bytes]:
    """A multipart body whose file part is a valid LoRA header followed by MAX_UPLOAD_BYTES + OVER of data."""
    yield (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="entity_type"\r\n\r\nstyles\r\n'
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="huge.safetensors"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    header, _ = large_kohya_lora(MAX_UPLOAD_BYTES + OVER)
    yield header
    block = bytes(MiB)
    for _ in range((MAX_UPLOAD_BYTES + OVER) // MiB):
        yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _whole(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return len(body) >= (int(lengths[0]) if lengths else 0)


def chunked(piece: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece)


def test_over_the_limit_is_413_before_the_body_ends(stack: Stack, admin_key: str) -> None:
    url = urlsplit(stack.api_url)
    total = MAX_UPLOAD_BYTES + OVER
    sent = 0
    stopped_by: str | None = None
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(
            (
                f"POST /api/v1/admin/lora/upload HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {admin_key}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        for piece in body():
            if select.select([sock], [], [], 0)[0]:
                stopped_by = "answer"  # the server spoke before we were done
                break
            try:
                sock.sendall(chunked(piece))
            except (BrokenPipeError, ConnectionResetError):
                stopped_by = "closed"
                break
            sent += len(piece)
        else:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        deadline = time.monotonic() + 30
        try:
            # The head, then the body its Content-Length announces (they may come in separate segments).
            while not _whole(answer) and time.monotonic() < deadline:
                received = sock.recv(65536)
                if not received:
                    break
                answer += received
        except ConnectionResetError:
            pass
    assert stopped_by is not None, "the whole oversized body was read"
    # It stopped reading at about the limit (what socket buffers hold on either side aside).
    assert MAX_UPLOAD_BYTES - 8 * MiB < sent < total - 100 * MiB, (sent, stopped_by, answer[:600])
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.split()[1] == b"413", answer[:500]
        assert b'"loc":["body","file"]' in answer
    else:
        assert stopped_by == "closed"  # reset before the answer could be read: it still closed early

    # Nothing left in staging: no object, and the S3 multipart upload was aborted, not left open.
    env = stack.cli_env()
    s3 = make_client(Settings.model_validate({"s3_endpoint": env["S3_ENDPOINT"]}))
    bucket = env.get("S3_BUCKET", "loraplane")
    assert [o.object_name for o in s3.list_objects(bucket, prefix="staging/", recursive=True)] == []
    probe = s3._create_multipart_upload(bucket, "probe/open", {})  # the listing does show open uploads
    try:
        assert [u.upload_id for u in s3._list_multipart_uploads(bucket, prefix="probe/").uploads] == [probe]
    finally:
        s3._abort_multipart_upload(bucket, "probe/open", probe)
    assert s3._list_multipart_uploads(bucket, prefix="staging/").uploads == []


def test_a_declared_length_over_the_limit_is_refused_at_once(stack: Stack, admin_key: str) -> None:
    url = urlsplit(stack.api_url)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(
            (
                f"POST /api/v1/lora/upload HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {admin_key}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {MAX_UPLOAD_BYTES + 10 * MiB}\r\n\r\n"
            ).encode()
        )
        answer = sock.recv(65536)  # nothing of the body sent: the answer comes anyway
    assert answer.split(b"\r\n", 1)[0].split()[1] == b"413", answer[:300]
