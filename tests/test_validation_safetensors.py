"""The safetensors header check, on files written by the safetensors package and on hand-broken ones."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from agents.validation import SafetensorsInfo, ValidationProblem, parse_safetensors


class CountingReader(io.RawIOBase):
    """A file that hands out at most 7 bytes per read and counts what it handed out."""

    def __init__(self, data: bytes) -> None:
        self._data, self.position = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data[self.position : self.position + min(len(buffer), 7)]
        buffer[: len(chunk)] = chunk
        self.position += len(chunk)
        return len(chunk)


def parse(data: bytes, **kwargs: int) -> SafetensorsInfo | list[ValidationProblem]:
    return parse_safetensors(io.BytesIO(data), len(data), **kwargs)


def codes(result: SafetensorsInfo | list[ValidationProblem]) -> list[str]:
    assert isinstance(result, list), f"expected problems, got {result}"
    return [problem.code for problem in result]


def handmade(header: dict[str, Any] | bytes, data: bytes = b"", *, declared: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(body) if declared is None else declared).to_bytes(8, "little") + body + data


def f32(name: str, shape: list[int], begin: int, end: int | None = None) -> dict[str, Any]:
    size = 4 * int(np.prod(shape))
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + size if end is None else end]}}


@pytest.fixture()
def real_file(tmp_path: Path) -> bytes:
    path = tmp_path / "adapter_model.safetensors"
    save_file(
        {
            "a": np.zeros((8, 64), dtype=np.float32),
            "b": np.ones((64, 8), dtype=np.float16),
            "flags": np.array([True, False]),
            "steps": np.arange(3, dtype=np.int64),
            "small": np.arange(5, dtype=np.uint16),
            "scalar": np.array(2.5, dtype=np.float64),
        },
        str(path),
        metadata={"format": "pt"},
    )
    return path.read_bytes()


def test_a_real_file_is_read_from_its_header_alone(real_file: bytes) -> None:
    reader = CountingReader(real_file)
    info = parse_safetensors(reader, len(real_file))
    assert isinstance(info, SafetensorsInfo)
    assert reader.position == 8 + info.header_length < len(real_file)
    assert info.metadata == {"format": "pt"}
    assert {name: (t.dtype, t.shape) for name, t in info.tensors.items()} == {
        "a": ("F32", (8, 64)),
        "b": ("F16", (64, 8)),
        "flags": ("BOOL", (2,)),
        "steps": ("I64", (3,)),
        "small": ("U16", (5,)),
        "scalar": ("F64", ()),
    }
    assert info.parameter_count == 8 * 64 * 2 + 2 + 3 + 5 + 1


def test_a_file_without_tensors_is_valid() -> None:
    info = parse(handmade(b"{}      "))
    assert isinstance(info, SafetensorsInfo) and not info.tensors and info.parameter_count == 0


def test_sub_byte_dtypes_count_bits() -> None:
    four = {"x": {"dtype": "F4", "shape": [2, 2], "data_offsets": [0, 2]}}
    assert isinstance(parse(handmade(four, b"\0\0")), SafetensorsInfo)
    three = {"x": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}
    assert codes(parse(handmade(three, b"\0\0"))) == ["misaligned_tensor"]


def test_a_truncated_real_file(real_file: bytes) -> None:
    assert set(codes(parse(real_file[:-3]))) == {"offsets_past_end"}
    assert codes(parse(real_file[:40])) == ["header_past_end"]
    assert codes(parse(real_file[:5])) == ["too_small"]


def test_a_header_larger_than_allowed_is_not_read(real_file: bytes) -> None:
    assert codes(parse(real_file, max_header_bytes=64)) == ["header_too_large"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(handmade(b"", declared=0), "header_empty", id="zero-length"),
        pytest.param(handmade(b"{}      ", declared=17), "header_past_end", id="length-past-end"),
        pytest.param(handmade(b"{}      ", declared=2**64 - 1), "header_too_large", id="length-too-large"),
        pytest.param(handmade(b"{not json}"), "header_not_json", id="not-json"),
        pytest.param(handmade(b'{"x": "\xff"}'), "header_not_utf8", id="not-utf8"),
        pytest.param(handmade(b"[1, 2]"), "header_not_object", id="json-array"),
        pytest.param(handmade(b'{"a":' * 100_000 + b"1" + b"}" * 100_000), "header_not_json", id="deeply-nested"),
        pytest.param(handmade(b'{"x": 1, "x": 2}'), "duplicate_key", id="duplicate-name"),
        pytest.param(handmade({"__metadata__": {"epochs": 3}}), "bad_metadata", id="metadata-not-str"),
        pytest.param(handmade({"x": [1, 2]}), "bad_tensor_entry", id="entry-not-object"),
        pytest.param(
            handmade({"x": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, bytes(16)),
            "unknown_dtype",
            id="unknown-dtype",
        ),
        pytest.param(
            handmade({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
            "bad_shape",
            id="negative-dim",
        ),
        pytest.param(
            handmade({"x": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4)),
            "bad_shape",
            id="bool-dim",
        ),
        pytest.param(
            handmade({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4]}}, bytes(4)),
            "bad_offsets",
            id="one-offset",
        ),
        pytest.param(handmade(f32("x", [1], 4, 0), bytes(4)), "bad_offsets", id="begin-after-end"),
        pytest.param(handmade(f32("x", [2, 2], 0, 12), bytes(12)), "size_mismatch", id="shape-bytes-mismatch"),
        pytest.param(handmade(f32("x", [4], 0), bytes(8)), "offsets_past_end", id="offsets-past-end"),
        pytest.param(handmade(f32("x", [2], 0) | f32("y", [2], 4), bytes(12)), "overlapping_tensors", id="overlap"),
        pytest.param(handmade(f32("x", [1], 0) | f32("y", [1], 8), bytes(12)), "hole", id="hole"),
        pytest.param(handmade(f32("x", [1], 0), bytes(12)), "hole", id="bytes-after-last-tensor"),
    ],
)
def test_malformed_files_are_refused(data: bytes, code: str) -> None:
    result = parse(data)
    assert codes(result) == [code]
    assert isinstance(result, list) and all(problem.message.startswith("safetensors: ") for problem in result)


def test_a_flood_of_bad_entries_yields_a_bounded_list() -> None:
    header = {f"t{i}": {"dtype": "X", "shape": [1], "data_offsets": [0, 1]} for i in range(500)}
    found = codes(parse(handmade(header, bytes(1))))
    assert len(found) == 21 and found[-1] == "too_many_problems"
