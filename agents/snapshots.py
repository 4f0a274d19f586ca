"""Snapshots of the agents' folded state (AgentState), so that start-up folds only the tail of the log.

A snapshot is gzip'd text of two lines: a header `{"format_version", "sha256"}` and the body, one JSON object with
what it covers (who wrote it, the aggregates and their `state_version`s, the `{partition: next offset}` of
`loraplane.events` folded into it) and the state: each aggregate's version and value, dumped with pydantic's
TypeAdapter over the aggregate's `state_type`, and the handled command ids inside the window. The header's sha256
is over the body's bytes, so a truncated or altered object is refused before it is parsed. No pickle: snapshots
live in S3, and loading one must never run code.

Capture and encoding are split so that a follower can capture between two events without stopping for the
serialization: `capture` copies the state's entries (a shallow copy: every aggregate value is immutable, `evolve`
returns new values and never changes its input) and `encode` does the rest in a thread.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agents.aggregate import Aggregate
from agents.state import AgentState, AggregateState, HandledCommands

FORMAT_VERSION = 1
_adapters: dict[Any, TypeAdapter[Any]] = {}


class SnapshotInvalid(Exception):
    """The bytes are not a snapshot this code can use: damaged, another format version, or other aggregates."""


def _adapter(state_type: Any) -> TypeAdapter[Any]:
    adapter = _adapters.get(state_type)
    if adapter is None:
        adapter = _adapters[state_type] = TypeAdapter(state_type)
    return adapter


def covered(aggregates: Mapping[str, Aggregate]) -> dict[str, int]:
    """What a snapshot must cover to be loaded into a state of these aggregates: name -> state_version."""
    return {name: aggregates[name].state_version for name in sorted(aggregates)}


@dataclass(frozen=True)
class Captured:
    """A consistent copy of a state at a point between events, with the positions folded into it."""

    who: str
    aggregates: dict[str, Aggregate]
    positions: dict[int, int]
    entries: list[tuple[tuple[str, str], AggregateState]]
    handled: list[tuple[str, float]]
    handled_newest: float
    handled_window_s: float

    @property
    def total_offset(self) -> int:
        return sum(self.positions.values())


@dataclass(frozen=True)
class Snapshot:
    who: str
    positions: dict[int, int]
    state: AgentState
    created_at: str

    @property
    def total_offset(self) -> int:
        return sum(self.positions.values())


def capture(state: AgentState, positions: Mapping[int, int], who: str) -> Captured:
    """Copy what a snapshot needs, synchronously (call it between two events); O(aggregates + handled ids)."""
    handled = state.handled_commands
    return Captured(
        who=who,
        aggregates=dict(state.aggregates),
        positions=dict(positions),
        entries=list(state.entries.items()),
        handled=list(handled.items()),
        handled_newest=handled.newest,
        handled_window_s=handled.window_s,
    )


def encode(captured: Captured, created_at: datetime | None = None) -> bytes:
    """The snapshot's bytes (CPU-bound: run it in a thread)."""
    entries = []
    for (aggregate_type, aggregate_id), entry in captured.entries:
        aggregate = captured.aggregates[aggregate_type]
        value = None if entry.value is None else _adapter(aggregate.state_type).dump_python(entry.value, mode="json")
        entries.append([aggregate_type, aggregate_id, entry.version, value])
    body = {
        "format_version": FORMAT_VERSION,
        "who": captured.who,
        "created_at": (created_at or datetime.now(UTC)).isoformat(),
        "aggregates": covered(captured.aggregates),
        "positions": {str(p): o for p, o in sorted(captured.positions.items())},
        "handled_window_s": captured.handled_window_s,
        "handled_newest": captured.handled_newest,
        "handled": [[c, at] for c, at in captured.handled],
        "entries": entries,
    }
    body_bytes = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    header = {"format_version": FORMAT_VERSION, "sha256": hashlib.sha256(body_bytes).hexdigest()}
    return gzip.compress(json.dumps(header).encode() + b"\n" + body_bytes, compresslevel=6, mtime=0)


def dump(state: AgentState, positions: Mapping[int, int], who: str) -> bytes:
    return encode(capture(state, positions, who))


def load(data: bytes, aggregates: Mapping[str, Aggregate], handled_window_s: float | None = None) -> Snapshot:
    """Check and decode a snapshot for a state of `aggregates`; SnapshotInvalid says why it cannot be used."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise SnapshotInvalid(f"not gzip: {exc}") from exc
    head, newline, body_bytes = raw.partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise SnapshotInvalid(f"unreadable header: {exc}") from exc
    if not newline or not isinstance(header, dict):
        raise SnapshotInvalid("no header line")
    if header.get("format_version") != FORMAT_VERSION:
        raise SnapshotInvalid(f"format version {header.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    if header.get("sha256") != hashlib.sha256(body_bytes).hexdigest():
        raise SnapshotInvalid("content hash does not match")
    try:
        body = json.loads(body_bytes)
        if body["format_version"] != FORMAT_VERSION:
            raise SnapshotInvalid(f"body format version {body['format_version']!r}")
        if body["aggregates"] != covered(aggregates):
            raise SnapshotInvalid(f"covers {body['aggregates']}, wanted {covered(aggregates)}")
        window_s = float(body["handled_window_s"])
        if handled_window_s is not None and window_s < handled_window_s:
            raise SnapshotInvalid(f"keeps handled commands for {window_s:g}s, wanted {handled_window_s:g}s")
        state = AgentState(dict(aggregates), handled_commands=HandledCommands(handled_window_s or window_s))
        for aggregate_type, aggregate_id, version, value in body["entries"]:
            aggregate = aggregates[aggregate_type]
            folded = None if value is None else _adapter(aggregate.state_type).validate_python(value)
            state.entries[(aggregate_type, aggregate_id)] = AggregateState(version=int(version), value=folded)
        for command_id, at in body["handled"]:
            state.handled_commands.add(command_id, float(at))
        state.handled_commands.newest = float(body["handled_newest"])
        positions = {int(p): int(o) for p, o in body["positions"].items()}
        return Snapshot(who=str(body["who"]), positions=positions, state=state, created_at=str(body["created_at"]))
    except SnapshotInvalid:
        raise
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise SnapshotInvalid(f"unreadable body: {type(exc).__name__}: {exc}") from exc


def restore_into(state: AgentState, restored: AgentState) -> None:
    """Make `state` (an object others hold) the restored state, in place."""
    state.entries.clear()
    state.entries.update(restored.entries)
    state.handled_commands = restored.handled_commands


def reset(state: AgentState) -> None:
    """Empty `state` in place, keeping its handled-commands window."""
    state.entries.clear()
    state.handled_commands.clear()


def differences(state: AgentState, snapshot: Snapshot) -> list[str]:
    """What differs between a state (folded from offset 0 to the snapshot's positions) and the snapshot's state."""
    found: list[str] = []
    ours, theirs = state.entries, snapshot.state.entries
    for key in sorted(ours.keys() | theirs.keys()):
        if key not in theirs:
            found.append(f"{key[0]}/{key[1]}: missing from the snapshot")
        elif key not in ours:
            found.append(f"{key[0]}/{key[1]}: only in the snapshot")
        elif ours[key] != theirs[key]:
            found.append(f"{key[0]}/{key[1]}: differs (version {ours[key].version} vs {theirs[key].version})")
    if state.handled_commands != snapshot.state.handled_commands:
        mine, other = dict(state.handled_commands.items()), dict(snapshot.state.handled_commands.items())
        found.append(f"handled commands differ: {len(mine.keys() ^ other.keys())} ids in one only")
    return found


def snapshot_equals_fold(state: AgentState, snapshot: Snapshot) -> bool:
    """Does the snapshot hold exactly the state folded from the log up to its positions? (for `events verify`)"""
    return not differences(state, snapshot)
