"""The agents' state: every aggregate folded from the event log, plus the commands already handled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.aggregate import Aggregate
from streams.envelope import Envelope
from streams.outcomes import CommandRejected


@dataclass
class AggregateState:
    version: int = 0
    value: Any = None


@dataclass
class AgentState:
    aggregates: dict[str, Aggregate]
    entries: dict[tuple[str, str], AggregateState] = field(default_factory=dict)
    handled_commands: set[str] = field(default_factory=set)

    def get(self, aggregate_type: str, aggregate_id: str) -> AggregateState:
        return self.entries.get((aggregate_type, aggregate_id)) or AggregateState()

    def apply(self, event: Envelope) -> None:
        """Fold one event in. Re-applying an event already folded in changes nothing."""
        self.handled_commands.add(event.command_id)
        aggregate = self.aggregates.get(event.aggregate_type)
        if aggregate is None or isinstance(event.payload, CommandRejected):
            return
        key = (event.aggregate_type, event.aggregate_id)
        current = self.entries.get(key) or AggregateState()
        version = event.aggregate_version or 0
        if version <= current.version:
            return
        self.entries[key] = AggregateState(version=version, value=aggregate.evolve(current.value, event))
