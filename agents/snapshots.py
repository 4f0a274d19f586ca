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

import gc
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import from_json, to_json

from agents.aggregate import Aggregate
from agents.state import AgentState, AggregateState, HandledCommands

FORMAT_VERSION = 2  # 2: each aggregate's owning team
_adapters: dict[Any, TypeAdapter[Any]] = {}


class SnapshotInvalid(Exception):
    """The bytes are not a snapshot this code can use: damaged, another format version, or other aggregates."""


@contextmanager
def _gc_paused(*, freeze: bool = False) -> Iterator[None]:
    """Building or dumping a whole state allocates objects by the hundred thousand, each of which counts towards the
    cyclic GC's thresholds: it would scan the growing heap again and again (a 100k-event state: 4.4 s to load with
    it, 1.7 s without). Nothing here makes cycles, so pause it for the bulk work (process-wide, for that long).

    `freeze`: what the bulk work made lives as long as the process (a loaded state), so move it to the permanent
    generation; else the first collection after the pause goes through every object made (1 s at 1M events), and
    every full collection after it again. Never for short-lived work: cyclic garbage frozen with it is never freed."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_enabled:
            gc.enable()


def _adapter(state_type: Any) -> TypeAdapter[Any]:
    """Validates and dumps a list of one aggregate's values (None for an aggregate that is gone) in one call."""
    adapter = _adapters.get(state_type)
    if adapter is None:
        adapter = _adapters[state_type] = TypeAdapter(list[state_type | None])
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
    with _gc_paused():
        return _encode(captured, created_at)


def _encode(captured: Captured, created_at: datetime | None) -> bytes:
    by_type: dict[str, tuple[list[str], list[int], list[Any], list[str | None]]] = {}
    for (aggregate_type, aggregate_id), entry in captured.entries:
        ids, versions, values, teams = by_type.setdefault(aggregate_type, ([], [], [], []))
        ids.append(aggregate_id)
        versions.append(entry.version)
        values.append(entry.value)
        teams.append(entry.team)
    entries = {
        aggregate_type: {
            "ids": ids,
            "versions": versions,
            "values": _adapter(captured.aggregates[aggregate_type].state_type).dump_python(values, mode="json"),
            "teams": teams,
        }
        for aggregate_type, (ids, versions, values, teams) in sorted(by_type.items())
    }
    body = {
        "format_version": FORMAT_VERSION,
        "who": captured.who,
        "created_at": (created_at or datetime.now(UTC)).isoformat(),
        "aggregates": covered(captured.aggregates),
        "positions": {str(p): o for p, o in sorted(captured.positions.items())},
        "handled_window_s": captured.handled_window_s,
        "handled_newest": captured.handled_newest,
        "handled": {"ids": [c for c, _ in captured.handled], "at": [at for _, at in captured.handled]},
        "entries": entries,
    }
    body_bytes = to_json(body)
    header = {"format_version": FORMAT_VERSION, "sha256": hashlib.sha256(body_bytes).hexdigest()}
    return gzip.compress(json.dumps(header).encode() + b"\n" + body_bytes, compresslevel=6, mtime=0)


def dump(state: AgentState, positions: Mapping[int, int], who: str) -> bytes:
    return encode(capture(state, positions, who))


def load(data: bytes, aggregates: Mapping[str, Aggregate], handled_window_s: float | None = None) -> Snapshot:
    """Check and decode a snapshot for a state of `aggregates`; SnapshotInvalid says why it cannot be used."""
    with _gc_paused(freeze=True):
        return _load(data, aggregates, handled_window_s)


def _load(data: bytes, aggregates: Mapping[str, Aggregate], handled_window_s: float | None) -> Snapshot:
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
        body = from_json(body_bytes)
        if body["format_version"] != FORMAT_VERSION:
            raise SnapshotInvalid(f"body format version {body['format_version']!r}")
        if body["aggregates"] != covered(aggregates):
            raise SnapshotInvalid(f"covers {body['aggregates']}, wanted {covered(aggregates)}")
        window_s = float(body["handled_window_s"])
        if handled_window_s is not None and window_s < handled_window_s:
            raise SnapshotInvalid(f"keeps handled commands for {window_s:g}s, wanted {handled_window_s:g}s")
        handled = body["handled"]
        if len(handled["ids"]) != len(handled["at"]):
            raise SnapshotInvalid("handled commands and their times do not pair up")
        restored = HandledCommands.restored(
            handled_window_s or window_s,
            zip(handled["ids"], map(float, handled["at"]), strict=True),
            float(body["handled_newest"]),
        )
        state = AgentState(dict(aggregates), handled_commands=restored)
        for aggregate_type, found in body["entries"].items():
            ids, versions, teams = found["ids"], found["versions"], found["teams"]
            values = _adapter(aggregates[aggregate_type].state_type).validate_python(found["values"])
            if not len(ids) == len(versions) == len(values) == len(teams):
                raise SnapshotInvalid(f"{aggregate_type}: ids, versions, values and teams do not pair up")
            for aggregate_id, version, value, team in zip(ids, versions, values, teams, strict=True):
                if team is not None and not isinstance(team, str):
                    raise SnapshotInvalid(f"{aggregate_type}/{aggregate_id}: team {team!r}")
                state.entries[(aggregate_type, aggregate_id)] = AggregateState(
                    version=int(version), value=value, team=team
                )
        positions = {int(p): int(o) for p, o in body["positions"].items()}
        return Snapshot(who=str(body["who"]), positions=positions, state=state, created_at=str(body["created_at"]))
    except SnapshotInvalid:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
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
