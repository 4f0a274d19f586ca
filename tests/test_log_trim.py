"""The log keeper's decisions and the archive's segment format, without a broker (infra.log_trim, infra.log_archive)."""

from __future__ import annotations

import gzip
import json

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from infra.log_archive import (
    ArchiveError,
    Segment,
    contiguous_end,
    covered,
    decode_segment,
    encode_segment,
    merge_plan,
    parse_segment_key,
    segment_key,
)
from infra.log_trim import batches_to_delete, should_trim

TP = TopicPartition("loraplane.events", 3)


def test_only_batches_wholly_below_the_safe_end_go_and_the_newest_stay() -> None:
    bases = [0, 3, 4, 10, 12, 20, 21]
    assert batches_to_delete(bases, safe_end=12, keep=2) == [0, 3, 4, 10]  # 10's records are 10 and 11
    assert batches_to_delete(bases, safe_end=11, keep=2) == [0, 3, 4]  # 10 ends at 11: record 11 not yet safe
    assert batches_to_delete(bases, safe_end=100, keep=2) == [0, 3, 4, 10, 12]  # 20 and 21 are kept
    assert batches_to_delete(bases, safe_end=0, keep=2) == []
    assert batches_to_delete(list(reversed(bases)), safe_end=100, keep=6) == [0]


def test_the_newest_batch_always_stays() -> None:
    assert batches_to_delete([0, 5], safe_end=100, keep=0) == [0]
    assert batches_to_delete([7], safe_end=100, keep=0) == []
    assert batches_to_delete([], safe_end=100, keep=3) == []


def test_a_partition_is_trimmed_once_it_holds_twice_what_it_keeps() -> None:
    assert not should_trim(400, keep=200)
    assert should_trim(401, keep=200)
    assert should_trim(3, keep=1)


def record(offset: int, value: bytes | None, key: bytes | None = b"workspace/a") -> ConsumerRecord[bytes, bytes]:
    headers = [("traceparent", b"00-abc-def-01"), ("raw", b"\xff\x00")]
    size = len(value) if value is not None else -1
    return ConsumerRecord(
        TP.topic, TP.partition, offset, 1_700_000_000_000 + offset, 0, key, value, None, 11, size, headers
    )


def test_a_segment_gives_back_every_record_as_it_was() -> None:
    records = [record(40, b'{"type": "workspace.created"}'), record(41, b"\xfe\xff not utf-8"), record(42, None, None)]
    back = decode_segment(TP, encode_segment(TP, records))
    assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in back] == [
        (r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in records
    ]
    lines = gzip.decompress(encode_segment(TP, records)).decode().splitlines()
    assert json.loads(lines[0]) == {
        "format": 1,
        "topic": TP.topic,
        "partition": 3,
        "first": 40,
        "end": 43,
        "records": 3,
    }
    assert json.loads(lines[1])["value"] == '{"type": "workspace.created"}'  # readable without our code


def test_a_segment_refuses_a_hole_and_damage() -> None:
    with pytest.raises(ValueError, match="not contiguous"):
        encode_segment(TP, [record(1, b"a"), record(3, b"b")])
    data = encode_segment(TP, [record(1, b"a"), record(2, b"b")])
    with pytest.raises(ArchiveError):
        decode_segment(TopicPartition(TP.topic, 4), data)  # another partition's
    with pytest.raises(ArchiveError):
        decode_segment(TP, data[:-8])
    lines = gzip.decompress(data).decode().splitlines()
    with pytest.raises(ArchiveError):
        decode_segment(TP, gzip.compress("\n".join(lines[:2]).encode()))  # a record missing


def test_segment_keys_and_how_far_segments_reach_from_zero() -> None:
    key = segment_key(TP, 0, 20_000)
    assert key == "archive/loraplane.events/003/00000000000000000000-00000000000000020000.jsonl.gz"
    assert parse_segment_key(TP, key) == Segment(0, 20_000, key)
    assert parse_segment_key(TopicPartition(TP.topic, 4), key) is None
    assert parse_segment_key(TP, "archive/loraplane.events/003/junk.jsonl.gz") is None
    assert contiguous_end([Segment(0, 10, "a"), Segment(10, 25, "b"), Segment(5, 12, "c")]) == 25
    assert contiguous_end([Segment(0, 10, "a"), Segment(11, 25, "b")]) == 10
    assert contiguous_end([Segment(3, 10, "a")]) == 0
    assert contiguous_end([]) == 0


def segments(*ranges: tuple[int, int]) -> list[Segment]:
    return [Segment(first, end, segment_key(TP, first, end)) for first, end in ranges]


def test_a_run_of_small_segments_is_merged_from_the_oldest_once_it_is_long_enough() -> None:
    small = segments((0, 10), (10, 20), (20, 30), (30, 40))
    assert merge_plan(small, max_records=100, min_run=4) == small
    assert merge_plan(small, max_records=100, min_run=5) == []  # not yet: the keeper adds one a round
    assert merge_plan(small, max_records=30, min_run=2) == small[:3]  # as many as fit
    assert merge_plan(list(reversed(small)), max_records=100, min_run=4) == small  # in offset order


def test_full_segments_and_holes_end_a_run_and_a_run_of_one_is_never_merged() -> None:
    assert merge_plan(segments((0, 100), (100, 110), (110, 120)), max_records=100, min_run=2) == segments(
        (100, 110), (110, 120)
    )
    assert merge_plan(segments((0, 10), (11, 20), (20, 30)), max_records=100, min_run=2) == segments((11, 20), (20, 30))
    assert merge_plan(segments((0, 90), (90, 100), (100, 150)), max_records=100, min_run=2) == segments(
        (0, 90), (90, 100)
    )
    # one segment merged "into one" would be stored under its own key and then removed
    assert merge_plan(segments((0, 10)), max_records=100, min_run=1) == []
    assert merge_plan(segments((0, 60), (60, 120)), max_records=100, min_run=1) == []


def test_segments_another_holds_are_found_whatever_their_order() -> None:
    merged, first, second, later = segments((0, 20), (0, 10), (10, 20), (20, 30))
    assert sorted(covered([second, later, merged, first])) == sorted([first, second])
    assert covered([first, second, later]) == []
    assert covered([]) == []
