"""Streaming multipart/form-data uploads to S3: the file part goes to `blobs/uploads/{uuid}` in bounded memory,
with a `staging/{uuid}` marker until an agent stores it (infra.staging).

Litestar's own form parsing buffers the whole body, so the body is read from `request.stream()` and
parsed with `multipart.PushMultipartParser`. The file's bytes are handed in blocks, through a bounded
queue, to a thread running the minio SDK's multipart `put_object`: memory stays at a few parts however
large the file, and the size limit is enforced while the bytes arrive (413 as soon as it is passed).
Small text fields are collected as they are, with a bound of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import queue
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response
from minio import Minio
from multipart import MultipartError, MultipartSegment, PushMultipartParser

from api.errors import ApiError, Unavailable, Unprocessable, error_response
from infra.staging import discard_staged, mark_staged, new_upload_key

PART_SIZE = 6 * 1024 * 1024  # one S3 part (the minimum is 5 MiB); about 3 are in memory at once
BLOCK_SIZE = 1024 * 1024  # what the request side hands the upload thread at a time
QUEUE_BLOCKS = 4  # blocks waiting for the upload thread: the request side's read-ahead
UPLOAD_THREADS = 2  # parts in flight to S3 (minio blocks the reader while they are busy)
MAX_FIELD_BYTES = 64 * 1024  # all text fields together
MAX_CONCURRENT = 8  # uploads streaming at once per process; more wait (unread) for a slot
MAX_PARTS = 16
# S3 taking none of an upload's bytes for this long (or not completing it this long after the last) is taken for S3
# being unavailable: the upload answers 503 rather than wait for the SDK's own timeouts (minutes).
STALL_S = 10.0
DISCARD_WAIT_S = 2.0  # longest a route waits for the removal of an upload it will not use
# The multipart framing around the file: boundaries, part headers, small fields.
FORM_OVERHEAD_BYTES = MAX_FIELD_BYTES + 64 * 1024


class ContentTooLarge(ApiError):
    status_code = 413
    error_type = "too_large"


def _too_large(_: Request[Any, Any, Any], exc: ContentTooLarge) -> Response[Any]:
    # Close rather than read and drop the rest of an oversized body.
    return error_response(
        exc.status_code, [{"loc": exc.loc, "msg": exc.msg, "type": exc.error_type}], {"Connection": "close"}
    )


# For the routes that call stage_upload: `**UPLOAD_ROUTE_OPTIONS` in the route decorator. Litestar's
# own body limit (10 MB by default) would refuse large files; stage_upload enforces its own limits.
UPLOAD_ROUTE_OPTIONS: dict[str, Any] = {
    "exception_handlers": {ContentTooLarge: _too_large},
    "request_max_body_size": None,  # also what api.contract knows a streamed upload by
}


class StorageUnavailable(Unavailable):
    error_type = "storage_unavailable"


@dataclass(frozen=True)
class StagedFile:
    filename: str  # as the client sent it: check it before use
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class StagedUpload:
    fields: dict[str, str]
    file: StagedFile | None
    bucket: str

    def discard(self, s3: Minio) -> None:
        if self.file is not None:
            discard_staged(s3, self.bucket, self.file.key)

    async def discard_within(self, s3: Minio, seconds: float = DISCARD_WAIT_S) -> None:
        """`discard`, waited for at most `seconds`: with S3 stalled a removal waits for the SDK's timeouts (minutes),
        and the answer (a 503, say) must not. It goes on meanwhile; the staging sweep removes what it could not."""
        await _settle(asyncio.to_thread(self.discard, s3), seconds)


# Why a file name cannot be accepted, or None: checked before any byte of the file is stored.
FilenameCheck = Callable[[str], str | None]


async def stage_upload(
    request: Request[Any, Any, Any],
    *,
    s3: Minio,
    bucket: str,
    max_bytes: int,
    file_field: str = "file",
    check_filename: FilenameCheck | None = None,
) -> StagedUpload:
    """Stream the request's multipart body: `file_field` to S3, the other fields as text.

    A missing file part is not an error here (`file` is None): the caller decides. Every error after
    bytes reached S3 removes them; on success the caller owns the staged object (`discard` it when
    it will not be used).
    """
    boundary = _boundary(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD_BYTES:
        raise ContentTooLarge(f"the file is larger than {max_bytes} bytes", loc=["body", file_field])
    async with _slots:
        return await _stage(request, s3, bucket, max_bytes, file_field, check_filename, boundary)


_slots = asyncio.Semaphore(MAX_CONCURRENT)


async def _stage(
    request: Request[Any, Any, Any],
    s3: Minio,
    bucket: str,
    max_bytes: int,
    file_field: str,
    check_filename: FilenameCheck | None,
    boundary: str,
) -> StagedUpload:
    fields: dict[str, str] = {}
    field_bytes = received = 0
    current: MultipartSegment | None = None
    text: bytearray | None = None
    sink: _S3Sink | None = None
    staged: StagedFile | None = None
    try:
        with PushMultipartParser(boundary, max_segment_count=MAX_PARTS, strict=True) as parser:
            async for chunk in request.stream():
                received += len(chunk)
                # The parts' own limits (the file's, the fields') speak first: one piece of the body may hold the byte
                # that crosses the file's limit and more than the framing allowance beyond it (uvicorn's httptools
                # protocol passes the body on in larger pieces than its h11 one).
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        current = event
                        if event.name == file_field and event.filename is not None:
                            if sink is not None or staged is not None:
                                raise Unprocessable(f"send one {file_field!r} part", loc=["body", file_field])
                            if check_filename and (problem := check_filename(event.filename)):
                                raise Unprocessable(problem, loc=["body", file_field])
                            sink = _S3Sink(s3, bucket, new_upload_key())
                        else:
                            text = bytearray()
                    elif event is None:
                        assert current is not None
                        if sink is not None and not sink.closed:
                            staged = await sink.finish(current.filename or "")
                        elif text is not None and current.name:
                            fields.setdefault(current.name, _decode(text, current.name))
                        current, text = None, None
                    elif sink is not None and not sink.closed:
                        if sink.size + len(event) > max_bytes:
                            raise ContentTooLarge(
                                f"the file is larger than {max_bytes} bytes", loc=["body", file_field]
                            )
                        await sink.write(event)
                    elif text is not None:
                        field_bytes += len(event)
                        if field_bytes > MAX_FIELD_BYTES:
                            raise Unprocessable(
                                f"form fields are larger than {MAX_FIELD_BYTES} bytes together", loc=["body"]
                            )
                        text += event
                if received > max_bytes + FORM_OVERHEAD_BYTES:  # framing or preamble beyond any real form
                    # Named by what the body holds, not by where a network piece happened to end: once the file
                    # part is open, the file is what is too large (the parser may still hold its last bytes back).
                    if sink is not None and not sink.closed:
                        raise ContentTooLarge(f"the file is larger than {max_bytes} bytes", loc=["body", file_field])
                    raise ContentTooLarge(f"the body is larger than {max_bytes} bytes", loc=["body"])
                if parser.closed:
                    break
    except MultipartError as exc:
        await _abandon(sink, staged, s3, bucket)
        raise Unprocessable(f"malformed multipart body: {exc}", loc=["body"]) from None
    except StorageUnavailable:
        await _abandon(sink, staged, s3, bucket, s3_stalled=True)
        raise
    except BaseException:
        await _abandon(sink, staged, s3, bucket)
        raise
    return StagedUpload(fields=fields, file=staged, bucket=bucket)


def _boundary(content_type: str) -> str:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise Unprocessable("send the body as multipart/form-data", loc=["header", "Content-Type"])
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value.strip('"'):
            return value.strip('"')
    raise Unprocessable("multipart/form-data needs a boundary", loc=["header", "Content-Type"])


def _decode(value: bytearray, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise Unprocessable(f"{name} is not UTF-8 text", loc=["body", name]) from None


async def _abandon(
    sink: _S3Sink | None, staged: StagedFile | None, s3: Minio, bucket: str, *, s3_stalled: bool = False
) -> None:
    if sink is not None:
        await sink.abort(wait=not s3_stalled)
    if staged is not None:
        await asyncio.to_thread(discard_staged, s3, bucket, staged.key)


_cleanups: set[asyncio.Task[Any]] = set()  # abandoned uploads being removed (a reference keeps each task alive)


async def _settle(cleanup: Coroutine[Any, Any, Any], seconds: float | None) -> None:
    """Run `cleanup` and wait for it at most `seconds` (None: until it is done); past that it goes on alone."""
    task = asyncio.create_task(cleanup)
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)
    await asyncio.wait({task}, timeout=seconds)


class _Aborted(Exception):
    """Raised inside the upload thread so minio aborts its multipart upload."""


class _S3Sink:
    """One object written from the event loop, uploaded by a thread of its own (not the loop's default
    executor, which a few long uploads would use up): `write` waits, without blocking the loop, while
    QUEUE_BLOCKS blocks wait for that thread, so a fast client cannot outrun S3 by more than that."""

    def __init__(self, s3: Minio, bucket: str, key: str, stall_s: float = STALL_S) -> None:
        self._s3 = s3
        self._stall_s = stall_s
        self._bucket = bucket
        self.key = key
        self.size = 0
        self.closed = False
        self._pending = bytearray()
        self._blocks: queue.Queue[bytes | None] = queue.Queue(QUEUE_BLOCKS)
        self._aborted = threading.Event()
        self._digest = hashlib.sha256()
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()  # set by the thread whenever it takes a block
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._done = asyncio.wrap_future(done)
        threading.Thread(target=self._run, args=(done,), name=f"upload {key}", daemon=True).start()

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        self._pending += data
        if len(self._pending) >= BLOCK_SIZE:
            block, self._pending = bytes(self._pending), bytearray()
            await self._put(block)

    async def finish(self, filename: str) -> StagedFile:
        self.closed = True
        if self._pending:
            await self._put(bytes(self._pending))
            self._pending = bytearray()
        await self._put(None)  # the end
        await asyncio.wait({self._done}, timeout=self._stall_s)
        if not self._done.done():
            raise StorageUnavailable(f"S3 did not complete the upload within {self._stall_s:g} s", loc=["body"])
        if (exc := self._done.exception()) is not None:
            raise StorageUnavailable(f"storing the upload failed: {type(exc).__name__}", loc=["body"])
        return StagedFile(filename=filename, key=self.key, size=self.size, sha256=self._digest.hexdigest())

    async def abort(self, *, wait: bool = True) -> None:
        """Stop the upload and remove what it stored; with `wait` false (S3 stalled: the upload thread and a removal
        wait for the SDK's timeouts, and the answer must not) that goes on in the background."""
        self.closed = True
        self._aborted.set()
        await _settle(self._remove_when_done(), None if wait else 0)

    async def _remove_when_done(self) -> None:
        with contextlib.suppress(Exception):
            await self._done
        await asyncio.to_thread(discard_staged, self._s3, self._bucket, self.key)

    async def _put(self, block: bytes | None) -> None:
        waiting_since = self._loop.time()
        while True:
            if self._done.done():
                failure = self._done.exception()
                shown = type(failure).__name__ if failure else "it stopped"
                raise StorageUnavailable(f"storing the upload failed: {shown}", loc=["body"])
            self._room.clear()
            try:
                self._blocks.put_nowait(block)
                return
            except queue.Full:
                if self._loop.time() - waiting_since > self._stall_s:
                    raise StorageUnavailable(
                        f"S3 took none of the upload's bytes for {self._stall_s:g} s", loc=["body"]
                    ) from None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), 1.0)

    def _took_block(self) -> None:
        self._loop.call_soon_threadsafe(self._room.set)

    def _run(self, done: concurrent.futures.Future[None]) -> None:
        try:
            mark_staged(self._s3, self._bucket, self.key)  # before any byte: the sweep finds what a crash leaves
            self._s3.put_object(
                self._bucket,
                self.key,
                _QueueReader(self),  # type: ignore[arg-type]  # minio only calls read()
                length=-1,
                part_size=PART_SIZE,
                num_parallel_uploads=UPLOAD_THREADS,
            )
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)


@dataclass
class _QueueReader:
    """The file-like side of the queue for minio: `read(n)` returns n bytes at once (minio concatenates
    what `read` returns, which is quadratic in small pieces) and hashes them on the way."""

    sink: _S3Sink
    _rest: bytes = b""
    _eof: bool = False

    def read(self, size: int = -1) -> bytes:
        parts, have = [], 0
        if self._rest:
            parts.append(self._rest)
            have, self._rest = len(self._rest), b""
        while (size < 0 or have < size) and not self._eof:
            block = self._next()
            if block is None:
                self._eof = True
                break
            self.sink._digest.update(block)
            parts.append(block)
            have += len(block)
        data = b"".join(parts)
        if 0 <= size < len(data):
            data, self._rest = data[:size], data[size:]
        return data

    def _next(self) -> bytes | None:
        while True:
            if self.sink._aborted.is_set():
                raise _Aborted
            with contextlib.suppress(queue.Empty):
                block = self.sink._blocks.get(timeout=0.5)
                self.sink._took_block()
                return block
