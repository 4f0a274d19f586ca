"""The safetensors header, checked as the reference reader does, from the header bytes alone.

Layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data section. The data
section is never read, so a 500 MB file costs one header read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

DEFAULT_MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_PROBLEMS = 20

# Bits per element of every dtype the reference implementation (safetensors 0.8) reads.
DTYPE_BITS: Mapping[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}


@dataclass(frozen=True)
class ValidationProblem:
    """Why an artifact is refused; `message` is written for the person who uploaded it."""

    code: str
    message: str


@dataclass(frozen=True)
class SafetensorsTensor:
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]


@dataclass(frozen=True)
class SafetensorsInfo:
    tensors: Mapping[str, SafetensorsTensor]
    metadata: Mapping[str, str]
    parameter_count: int
    header_length: int


def capped(problems: list[ValidationProblem], limit: int = MAX_PROBLEMS) -> list[ValidationProblem]:
    """At most `limit` problems, then one that counts the rest: a hostile file must not yield a million messages."""
    if len(problems) <= limit:
        return problems
    rest = len(problems) - limit
    return [*problems[:limit], ValidationProblem("too_many_problems", f"... and {rest} more problems")]


def read_exactly(read: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes; fewer only at end of file (a raw stream may return short reads before that)."""
    chunks: list[bytes] = []
    left = n
    while left > 0:
        chunk = read.read(min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def parse_safetensors(
    read: BinaryIO, size: int, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> SafetensorsInfo | list[ValidationProblem]:
    """Read and check the header of the safetensors file of `size` bytes that `read` is positioned at the start of."""
    if size < 8:
        return [_problem("too_small", f"the file has {size} bytes; a safetensors file starts with an 8-byte length")]
    prefix = read_exactly(read, 8)
    if len(prefix) < 8:
        return [_problem("truncated", "the file ends inside the 8-byte header length")]
    header_length = int.from_bytes(prefix, "little")
    if header_length == 0:
        return [_problem("header_empty", "the header length is 0")]
    if header_length > max_header_bytes:
        return [
            _problem("header_too_large", f"the header length {header_length} exceeds the {max_header_bytes} allowed")
        ]
    if header_length > size - 8:
        return [_problem("header_past_end", f"the header length {header_length} exceeds the {size - 8} bytes after it")]
    raw = read_exactly(read, header_length)
    if len(raw) < header_length:
        return [_problem("truncated", f"the file ends inside the {header_length}-byte header")]
    header = _decode_header(raw)
    if isinstance(header, list):
        return header
    return _check_header(header, header_length, data_length=size - 8 - header_length)


def _problem(code: str, message: str) -> ValidationProblem:
    return ValidationProblem(code, f"safetensors: {message}")


def _decode_header(raw: bytes) -> dict[str, Any] | list[ValidationProblem]:
    if not raw.startswith(b"{"):
        return [_problem("header_not_object", "the header does not start with '{'")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return [_problem("header_not_utf8", "the header is not UTF-8")]
    duplicates: list[str] = []

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        header = json.loads(text, object_pairs_hook=unique)
    except (ValueError, RecursionError):
        return [_problem("header_not_json", "the header is not valid JSON")]
    if not isinstance(header, dict):
        return [_problem("header_not_object", "the header is not a JSON object")]
    if duplicates:
        return [_problem("duplicate_key", f"the header repeats the key {duplicates[0]!r}")]
    return header


def _check_header(
    header: dict[str, Any], header_length: int, *, data_length: int
) -> SafetensorsInfo | list[ValidationProblem]:
    problems: list[ValidationProblem] = []
    metadata: dict[str, str] = {}
    tensors: dict[str, SafetensorsTensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            if isinstance(entry, dict) and all(isinstance(value, str) for value in entry.values()):
                metadata = entry
            elif entry is not None:
                problems.append(_problem("bad_metadata", "__metadata__ must map strings to strings"))
            continue
        tensor = _check_tensor(name, entry, data_length)
        if isinstance(tensor, ValidationProblem):
            problems.append(tensor)
        else:
            tensors[name] = tensor
    if not problems:
        problems.extend(_coverage_problems(tensors, data_length))
    if problems:
        return capped(problems)
    return SafetensorsInfo(
        tensors=tensors,
        metadata=metadata,
        parameter_count=sum(math.prod(tensor.shape) for tensor in tensors.values()),
        header_length=header_length,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tensor(name: str, entry: object, data_length: int) -> SafetensorsTensor | ValidationProblem:
    if not isinstance(entry, dict):
        return _problem("bad_tensor_entry", f"tensor {name!r} is not an object with dtype, shape and data_offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        return _problem("unknown_dtype", f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(dim) and dim >= 0 for dim in shape):
        return _problem("bad_shape", f"tensor {name!r} has shape {shape!r}; expected a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and o >= 0 for o in offsets)):
        return _problem("bad_offsets", f"tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]")
    begin, end = offsets
    if begin > end:
        return _problem("bad_offsets", f"tensor {name!r} has data_offsets [{begin}, {end}] with begin after end")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8:
        return _problem("misaligned_tensor", f"tensor {name!r} of {dtype} {shape} does not end on a byte boundary")
    if end - begin != bits // 8:
        return _problem(
            "size_mismatch",
            f"tensor {name!r} of {dtype} {shape} needs {bits // 8} bytes but data_offsets give {end - begin}",
        )
    if end > data_length:
        return _problem(
            "offsets_past_end",
            f"tensor {name!r} ends at byte {end} of a data section of {data_length} bytes (truncated file?)",
        )
    return SafetensorsTensor(dtype=dtype, shape=tuple(shape), data_offsets=(begin, end))


def _coverage_problems(tensors: Mapping[str, SafetensorsTensor], data_length: int) -> list[ValidationProblem]:
    """The ranges must tile the data section exactly: no overlap, no hole, nothing after the last tensor."""
    problems: list[ValidationProblem] = []
    cursor, previous = 0, None
    for begin, end, name in sorted((*tensor.data_offsets, name) for name, tensor in tensors.items()):
        if begin < cursor:
            problems.append(_problem("overlapping_tensors", f"tensors {previous!r} and {name!r} share bytes"))
        elif begin > cursor:
            problems.append(_problem("hole", f"bytes {cursor} to {begin} of the data section belong to no tensor"))
        if end >= cursor:
            cursor, previous = end, name
    if cursor < data_length:
        problems.append(
            _problem("hole", f"bytes {cursor} to {data_length} at the end of the data section belong to no tensor")
        )
    return problems
