"""The agents' state: every aggregate folded from the event log, plus the commands already handled."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agents.aggregate import Aggregate
from streams.envelope import Envelope
from streams.outcomes import CommandRejected
from streams.ownership import owner_after

DEFAULT_HANDLED_WINDOW_S = 7 * 24 * 3600.0
_PRUNE_EVERY = 1024


class HandledCommands:
    """The ids of the commands whose outcome is in the log, for the processor's dedupe, over a sliding window.

    Why a window is enough: a command reaches a worker again only while something still holds it unanswered (an
    offset of `loraplane.commands` not yet committed, seconds; a reporter retrying with backoff, under a minute) or
    when a process re-sends work it derives from the log, whose ids are deterministic but whose decisions are
    idempotent on the state anyway. None of that spans days, so ids whose outcome is older than `window_s` (default
    7 days), measured against the newest event folded (log time, not the clock: a replay answers as the live fold
    did), are dropped: the set stays bounded by a week of commands instead of growing forever. An id outside the
    window reads as not handled even before it is pruned, so the answer never depends on when pruning ran.
    """

    def __init__(self, window_s: float = DEFAULT_HANDLED_WINDOW_S) -> None:
        self.window_s = window_s
        # command id -> when its (last) outcome occurred, epoch seconds; an OrderedDict pops its front in O(1)
        self._at: OrderedDict[str, float] = OrderedDict()
        self.newest = 0.0
        self._added = 0

    @staticmethod
    def restored(window_s: float, items: Iterable[tuple[str, float]], newest: float) -> HandledCommands:
        """Rebuilt from `items()` and `newest` of another (a snapshot's)."""
        handled = HandledCommands(window_s)
        handled._at.update(items)
        handled.newest = newest
        handled.prune()
        return handled

    def add(self, command_id: str, occurred_at: datetime | float) -> None:
        at = occurred_at if isinstance(occurred_at, float) else occurred_at.timestamp()
        if at > self._at.get(command_id, -1.0):
            self._at[command_id] = at
        self.newest = max(self.newest, at)
        self._added += 1
        if self._added % _PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> None:
        """Drop ids older than the window. Ids are kept in the order first seen, roughly log time, so this pops from
        the front until the first recent id: amortized O(1) per command (an old id behind a recent one waits)."""
        cutoff = self.cutoff
        while self._at:
            at = next(iter(self._at.values()))
            if at >= cutoff:
                break
            self._at.popitem(last=False)

    @property
    def cutoff(self) -> float:
        return self.newest - self.window_s

    def __contains__(self, command_id: object) -> bool:
        at = self._at.get(command_id) if isinstance(command_id, str) else None
        return at is not None and at >= self.cutoff

    def items(self) -> Iterator[tuple[str, float]]:
        """Every id inside the window, with its time."""
        cutoff = self.cutoff
        return ((c, at) for c, at in self._at.items() if at >= cutoff)

    def __iter__(self) -> Iterator[str]:
        return (c for c, _ in self.items())

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def clear(self) -> None:
        self._at.clear()
        self.newest = 0.0

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HandledCommands):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HandledCommands({len(self)} within {self.window_s:g}s)"


@dataclass
class AggregateState:
    version: int = 0
    value: Any = None
    team: str | None = None  # the owning team (streams.ownership), None for nobody's


def folded(aggregate: Aggregate, current: AggregateState, event: Envelope) -> AggregateState:
    """`current` with one state-changing event folded in: its version, value and owner."""
    return AggregateState(
        version=event.aggregate_version or 0,
        value=aggregate.evolve(current.value, event),
        team=owner_after(current.team, event),
    )


@dataclass
class AgentState:
    aggregates: dict[str, Aggregate]
    entries: dict[tuple[str, str], AggregateState] = field(default_factory=dict)
    handled_commands: HandledCommands = field(default_factory=HandledCommands)

    def get(self, aggregate_type: str, aggregate_id: str) -> AggregateState:
        return self.entries.get((aggregate_type, aggregate_id)) or AggregateState()

    def apply(self, event: Envelope) -> None:
        """Fold one event in. Re-applying an event already folded in changes nothing."""
        self.handled_commands.add(event.command_id, event.occurred_at)
        aggregate = self.aggregates.get(event.aggregate_type)
        if aggregate is None or isinstance(event.payload, CommandRejected):
            return
        key = (event.aggregate_type, event.aggregate_id)
        current = self.entries.get(key) or AggregateState()
        version = event.aggregate_version or 0
        if version <= current.version:
            return
        self.entries[key] = folded(aggregate, current, event)
