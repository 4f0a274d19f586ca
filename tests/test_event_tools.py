"""`loraplane events tail | export | verify | schema` (infra/event_tools.py): the checks and filters on their own,
then the real CLI against the test stack's log, and `verify` on a topic with planted problems."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest

import streams.catalog  # noqa: F401 - registers every message type
from infra.event_tools import LogVerifier, OffsetRange, Selection, parse_moment, parse_offsets
from infra.kafka_admin import ensure_topics
from streams.envelope import SYSTEM_ACTOR, Payload
from streams.outcomes import CommandRejected, RejectionCode
from streams.serialization import encode, envelope_for
from streams.topics import TopicSpec
from streams.workspaces import WorkspaceCreated, WorkspaceDeleted
from tests.support import Api, Stack, produced, read_topic

# --- on their own -----------------------------------------------------------------------------


def event(payload: Payload, aggregate: str, version: int, command_id: str) -> bytes:
    return encode(envelope_for(payload, aggregate_id=aggregate, actor=SYSTEM_ACTOR, aggregate_version=version,
                               command_id=command_id, aggregate_type="workspace"))  # fmt: skip


def rejected(aggregate: str, version: int, command_id: str) -> bytes:
    refusal = CommandRejected(command_type="workspace.create", code=RejectionCode.CONFLICT, reason="taken")
    return event(refusal, aggregate, version, command_id)


def planted_log() -> list[bytes]:
    """One partition's records: a gap in `a`'s versions, `c3` decided twice, a repeated version, garbage."""
    return [
        event(WorkspaceCreated(name="a"), "a", 1, "c1"),
        event(WorkspaceCreated(name="b"), "b", 1, "c2"),
        rejected("a", 1, "c3"),
        event(WorkspaceDeleted(name="a"), "a", 2, "c4"),
        event(WorkspaceCreated(name="a"), "a", 4, "c5"),  # version 3 is missing
        rejected("a", 4, "c3"),  # c3 again, after other decisions
        event(WorkspaceDeleted(name="b"), "b", 1, "c6"),  # version 1 again
        b"not json",
        encode(envelope_for(WorkspaceCreated(name="x"), aggregate_id="x", actor=SYSTEM_ACTOR)).replace(
            b'"workspace.created"', b'"workspace.create"'
        ),
    ]


def test_verify_names_each_planted_problem() -> None:
    verifier = LogVerifier()
    for offset, value in enumerate(planted_log()):
        verifier.add(0, offset, value)
    report = verifier.report
    assert report.problems == [
        "0:4: workspace/a: version 4 follows 2: version 3 missing",
        "0:5: command c3 has a second decision (its first began at 0:2)",
        "0:6: workspace/b: version 1 again after version 1",
        "0:7: does not decode: body is not JSON: expected ident at line 1 column 2",
        "0:8: workspace.create is not an event",
    ]
    assert (report.records, report.events, report.aggregates, report.decisions) == (9, 7, 2, 6)
    assert not report.ok and "5 problem(s)" in report.summary()


def test_a_decision_of_several_events_is_one_decision_and_a_clean_log_has_no_problems() -> None:
    verifier = LogVerifier()
    records = [
        event(WorkspaceCreated(name="a"), "a", 1, "c1"),
        event(WorkspaceDeleted(name="a"), "a", 2, "c1"),
        event(WorkspaceCreated(name="a"), "a", 3, "c1"),
        rejected("a", 3, "c2"),
        event(WorkspaceDeleted(name="a"), "a", 4, "c3"),
    ]
    for offset, value in enumerate(records):
        verifier.add(0, offset, value)
    verifier.add(1, 0, event(WorkspaceCreated(name="z"), "z", 1, "c4"))
    assert verifier.report.ok and verifier.report.decisions == 4 and verifier.report.aggregates == 2


def test_a_record_stored_twice_by_a_retried_produce_is_a_repeat_and_a_changed_one_a_problem() -> None:
    verifier = LogVerifier()
    created = event(WorkspaceCreated(name="a"), "a", 1, "c1")
    deleted = event(WorkspaceDeleted(name="a"), "a", 2, "c1")
    other = event(WorkspaceCreated(name="b"), "b", 1, "c2")
    for offset, value in enumerate([created, deleted, other, created, deleted]):  # the retry of c1's batch
        verifier.add(0, offset, value)
    report = verifier.report
    assert report.ok, report.problems
    assert (report.events, report.decisions, report.repeats) == (3, 2, 2)
    assert "2 repeated records (retried produces, skipped): no problems" in report.summary()

    changed = json.loads(created)
    changed["payload"]["description"] = "not what was written"
    verifier.add(0, 5, json.dumps(changed).encode())
    assert verifier.report.problems == [f"0:5: event {changed['id']} again, with other content"]


def test_selection_by_type_prefix_aggregate_and_time() -> None:
    record = {"type": "adapter.stored", "aggregate_type": "adapter", "aggregate_id": "default/x",
              "occurred_at": "2026-01-02T03:04:05Z"}  # fmt: skip
    assert Selection().matches(record)
    assert Selection(types=("adapter.",)).matches(record)
    assert Selection(types=("workspace.", "adapter.stored")).matches(record)
    assert not Selection(types=("adapter.store",)).matches(record)
    assert Selection(aggregate="adapter").matches(record)
    assert Selection(aggregate="adapter/default/x").matches(record)
    assert not Selection(aggregate="adapter/default/y").matches(record)
    moment = parse_moment("2026-01-02T03:04:05Z")
    assert Selection(since=moment).matches(record)
    assert not Selection(until=moment).matches(record)
    assert Selection(since=moment - timedelta(seconds=1), until=moment + timedelta(seconds=1)).matches(record)
    assert parse_moment(str(int(moment.timestamp()))) == moment
    assert parse_moment("2026-01-02T03:04:05") == moment == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_offset_ranges_per_partition() -> None:
    assert parse_offsets(["5", "1:7", "2:0"]) == (5, {1: 7, 2: 0})
    start, starts = parse_offsets(["10", "1:3"])
    stop, stops = parse_offsets(["2:4"])
    offsets = OffsetRange(start, stop, starts, stops)
    assert offsets.start_of(0) == 10 and offsets.start_of(1) == 3
    assert offsets.holds(0, 10) and not offsets.holds(0, 9) and offsets.holds(0, 10**9)
    assert offsets.holds(2, 3) is False  # from 10 (every partition) to 4 in partition 2
    assert OffsetRange(stops={2: 4}).holds(2, 3) and not OffsetRange(stops={2: 4}).holds(2, 4)


# --- the real CLI on the stack's log ----------------------------------------------------------


def events_cli(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return stack.cli("events", *args, timeout=timeout)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def create_workspaces(client: Api, names: list[str]) -> None:
    for name in names:
        assert client.post("/v2/workspaces", params={"wait": 10}, json={"name": name}).status_code == 201


def test_tail_prints_what_is_written_after_it_starts(stack: Stack, user: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "events", "tail", "--type", "workspace.", "--aggregate",
         f"workspace/tail-{tag}", "--limit", "2"],
        env=stack.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        ready = process.stderr.readline()
        while ready and not ready.startswith("following "):  # after any log lines
            ready = process.stderr.readline()
        assert ready.startswith("following loraplane.events from 0:"), ready
        create_workspaces(user, [f"tail-{tag}", f"other-{tag}"])
        assert user.delete(f"/v2/workspaces/tail-{tag}", params={"wait": 10}).status_code == 204
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    printed = lines(out)
    assert [(e["type"], e["aggregate_id"]) for e in printed] == [
        ("workspace.created", f"tail-{tag}"),
        ("workspace.deleted", f"tail-{tag}"),
    ]
    assert printed[0]["payload"] == {"name": f"tail-{tag}", "description": None}


def test_tail_from_the_start_and_following(stack: Stack, user: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    create_workspaces(user, [f"early-{tag}"])
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "events", "tail", "--from-start", "--type", "workspace.created"],
        env=stack.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    seen: Queue[dict[str, Any]] = Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()

    def next_named(name: str) -> dict[str, Any]:
        while True:
            try:
                record = seen.get(timeout=60)
            except Empty:
                raise AssertionError(f"tail never printed {name}") from None
            assert record["type"] == "workspace.created"
            if record["aggregate_id"] == name:
                return record

    try:
        next_named(f"early-{tag}")  # from the log's start
        create_workspaces(user, [f"late-{tag}"])
        next_named(f"late-{tag}")  # then following it
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_export_by_aggregate_offsets_and_time_to_a_file(stack: Stack, user: Api, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [f"export-{tag}-{i}" for i in range(3)]
    create_workspaces(user, names)
    mine = [r for r in read_topic(stack, "loraplane.events") if r.json()["aggregate_id"] in names]
    assert len(mine) == 3

    everything = events_cli(stack, "export", "--type", "workspace.")
    assert everything.returncode == 0, everything.stderr
    exported = [e for e in lines(everything.stdout) if e["aggregate_id"] in names]
    assert sorted(e["aggregate_id"] for e in exported) == names
    assert all(e["type"].startswith("workspace.") for e in lines(everything.stdout))
    assert "exported " in everything.stderr and "--from-offset 0:" in everything.stderr

    one = mine[1]
    at = f"{one.partition}:{one.offset}"
    cut = events_cli(stack, "export", "--partition", str(one.partition), "--from-offset", at,
                     "--to-offset", f"{one.partition}:{one.offset + 1}")  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    assert lines(cut.stdout) == [one.json()]
    assert cut.stderr.rstrip().endswith(f"to continue from the end: --from-offset {one.partition}:{one.offset + 1}")

    times = sorted(r.json()["occurred_at"] for r in mine)
    output = tmp_path / "window.jsonl"
    window = events_cli(stack, "export", "--aggregate", "workspace", "--since", times[0], "--until", times[2],
                        "--output", str(output))  # fmt: skip
    assert window.returncode == 0 and window.stdout == "", window.stderr
    within = [e for e in lines(output.read_text()) if e["aggregate_id"] in names]
    assert sorted(e["occurred_at"] for e in within) == times[:2]  # until is exclusive
    assert all(parse_moment(times[0]) <= parse_moment(e["occurred_at"]) < parse_moment(times[2])
               for e in lines(output.read_text()))  # fmt: skip


def test_verify_finds_no_problem_in_the_stack_s_log(stack: Stack, user: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    create_workspaces(user, [f"verify-{tag}"])
    assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": f"verify-{tag}"}).status_code == 409
    result = events_cli(stack, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("loraplane.events: ") and result.stdout.rstrip().endswith("no problems")


def test_verify_on_a_log_with_a_planted_gap_and_a_duplicated_decision(stack: Stack) -> None:
    topic = f"planted-{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_topics(stack.bootstrap, [TopicSpec(topic, partitions=2)]))
    with produced(stack.bootstrap) as producer:
        for value in planted_log():
            producer.send(topic, value, key=b"one-partition")
        producer.send(topic, event(WorkspaceCreated(name="q"), "q", 1, "c9"), key=b"q")

    result = events_cli(stack, "verify", "--topic", topic)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert ": workspace/a: version 4 follows 2: version 3 missing" in out
    assert ": command c3 has a second decision (its first began at " in out
    assert ": workspace/b: version 1 again after version 1" in out
    assert ": does not decode: body is not JSON" in out
    assert out.rstrip().endswith(f"{topic}: 10 records, 8 events decoded, 3 aggregates, 7 decisions: 5 problem(s)")


def test_the_cli_prints_the_schema_the_api_serves(stack: Stack, user: Api, anonymous: Api) -> None:
    printed = events_cli(stack, "schema")
    assert printed.returncode == 0, printed.stderr
    served = user.get("/v2/events/schema")
    assert served.status_code == 200
    assert served.json() == json.loads(printed.stdout)
    assert "adapter.stored@1" in served.json()["$defs"]
    assert anonymous.get("/v2/events/schema").status_code == 401


@pytest.mark.parametrize("args", [["export", "--topic", "no-such-topic"], ["verify", "--topic", "no-such-topic"]])
def test_a_missing_topic_is_named(stack: Stack, args: list[str]) -> None:
    result = events_cli(stack, *args)
    assert result.returncode == 2 and "topic no-such-topic does not exist" in result.stderr
