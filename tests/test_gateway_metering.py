"""Pure pieces of the gateway's metering: the server-sent events relay, usage batches, and usage buckets."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

import streams.catalog  # noqa: F401
from api.gateway.sse import SseUsage, Usage, usage_of_body
from api.gateway.usage import UsageMeter, minute_of
from api.usage.buckets import UsageRecord, bucket_usage, span
from streams.envelope import Actor, ActorType, Envelope
from streams.usage import RecordUsage


def event(document: object) -> bytes:
    return b"data: " + json.dumps(document).encode() + b"\n\n"


CHUNKS = [
    event({"id": "c", "choices": [{"index": 0, "text": " a"}]}),
    event({"id": "c", "choices": [{"index": 0, "text": " b", "finish_reason": "length"}]}),
    event({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("cut", [1, 7, 19, 64])
def test_events_pass_through_whole_and_the_usage_chunk_is_read_and_stripped(cut: int) -> None:
    stream = b"".join(CHUNKS)
    for strip in (True, False):
        parser = SseUsage(strip_usage=strip)
        out = b"".join(parser.feed(stream[i : i + cut]) for i in range(0, len(stream), cut)) + parser.finish()
        expected = b"".join(c for c in CHUNKS if not (strip and b'"usage"' in c))
        assert out == expected
        assert parser.usage == Usage(3, 2) and parser.done


def test_an_event_is_forwarded_as_soon_as_it_is_complete() -> None:
    parser = SseUsage(strip_usage=True)
    assert parser.feed(CHUNKS[0][:10]) == b"" and not parser.done
    assert parser.feed(CHUNKS[0][10:] + CHUNKS[1][:5]) == CHUNKS[0]
    assert parser.feed(CHUNKS[1][5:]) == CHUNKS[1]


def test_usage_on_chunks_with_choices_is_kept_and_read() -> None:
    chunk = event({"choices": [{"text": "x"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
    parser = SseUsage(strip_usage=True)
    assert parser.feed(chunk) == chunk and parser.usage == Usage(1, 1)
    crlf = b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 4}}).encode() + b"\r\n\r\n"
    parser = SseUsage(strip_usage=True)
    assert parser.feed(crlf) == b"" and parser.usage == Usage(4, 0)


def test_usage_of_a_whole_answer() -> None:
    assert usage_of_body(b'{"usage": {"prompt_tokens": 7, "completion_tokens": 9}}') == Usage(7, 9)
    assert usage_of_body(b'{"choices": []}') is None
    assert usage_of_body(b"not json") is None


def test_the_meter_batches_per_key_model_and_minute_and_keeps_a_batch_until_it_is_sent() -> None:
    sent: list[Envelope] = []
    fail = [True]

    async def send(command: Envelope) -> None:
        if fail[0]:
            raise ConnectionError("broker away")
        sent.append(command)

    alice = Actor(type=ActorType.API_KEY, id="k-alice", name="alice")
    bob = Actor(type=ActorType.API_KEY, id="k-bob", name="bob")
    meter = UsageMeter(send, "gw-1", flush_s=10)
    at = datetime(2026, 11, 28, 10, 15, 42, tzinfo=UTC)
    meter.count(alice, "m", "base", 3, 4, at=at)
    meter.count(alice, "m", "base", 1, 1, at=at.replace(second=59))
    meter.count(alice, "m", "base", 5, 5, at=at.replace(minute=16))
    meter.count(bob, "lora", "base", 2, 2, at=at)

    with pytest.raises(ConnectionError):
        asyncio.run(meter.flush())
    meter.count(bob, "lora", "base", 1, 0, at=at)  # after the failed batch: goes to the next one
    fail[0] = False
    asyncio.run(meter.flush())
    first = [c.payload for c in sent[:2]]
    assert all(isinstance(p, RecordUsage) for p in first)
    by_key = {p.api_key_id: p for p in first if isinstance(p, RecordUsage)}
    assert [(r.minute.minute, r.requests, r.prompt_tokens, r.completion_tokens) for r in by_key["k-alice"].rows] == [
        (15, 2, 4, 5),
        (16, 1, 5, 5),
    ]
    assert sent[0].aggregate_id == sent[0].payload.api_key_id  # type: ignore[attr-defined]
    assert sent[0].actor == alice
    # The batch that failed was sent as it was made (the same command id), then the later one.
    assert len(sent) == 3 and isinstance(sent[2].payload, RecordUsage) and sent[2].payload.rows[0].requests == 1
    ids = [c.command_id for c in sent]
    assert len(set(ids)) == 3


def test_minutes_are_utc() -> None:
    assert minute_of(datetime(2026, 1, 1, 12, 30, 59, 999, tzinfo=UTC)) == datetime(2026, 1, 1, 12, 30, tzinfo=UTC)


def record(minute: int, key: str, model: str, prompt: int, completion: int, base: str | None = "b") -> UsageRecord:
    at = datetime.fromtimestamp(1_800_000_000 - 1_800_000_000 % 3600 + minute * 60, UTC)
    return UsageRecord(at, key, model, base, 1, prompt, completion)


def test_buckets_sum_groups_and_price_every_row_by_its_base_model() -> None:
    hour = 1_800_000_000 - 1_800_000_000 % 3600
    rows = [
        record(0, "k1", "m1", 10, 5),
        record(1, "k1", "m1", 1, 1),
        record(1, "k2", "m2", 2, 2, base="pricey"),
        record(61, "k1", "m1", 100, 0),
    ]
    prices = {"b": 0.5, "pricey": 2.0}
    buckets = bucket_usage(
        rows, width="1h", start=hour, end=hour + 7200, group_by=["model"], unit_price=lambda b: prices[b or ""]
    )
    assert [(b.start, b.end) for b in buckets] == [(hour, hour + 3600), (hour + 3600, hour + 7200)]
    first = {r.model: r for r in buckets[0].results}
    assert (first["m1"].requests, first["m1"].prompt_tokens, first["m1"].completion_tokens) == (2, 11, 6)
    assert first["m1"].cost == pytest.approx(17 * 0.5) and first["m2"].cost == pytest.approx(4 * 2.0)
    assert first["m1"].api_key_id is None
    [second] = buckets[1].results
    assert second.prompt_tokens == 100
    flat = bucket_usage(rows, width="1d", start=hour, end=hour + 60, group_by=[], unit_price=lambda b: 1.0)
    assert len(flat) == 1 and flat[0].results[0].requests == 4 and flat[0].end - flat[0].start == 86400
    by_key = bucket_usage(
        rows, width="1m", start=hour, end=hour + 120, group_by=["api_key", "model"], unit_price=lambda b: 0.0
    )
    assert [[(r.api_key_id, r.model) for r in b.results] for b in by_key] == [
        [("k1", "m1")],
        [("k1", "m1"), ("k2", "m2")],
    ]


def test_span_aligns_to_the_bucket() -> None:
    assert span(90, 3601, "1h") == (0, 7200)
    assert span(120, 180, "1m") == (120, 180)
