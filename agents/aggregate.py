"""What every aggregate offers the command processor: pure `decide` and `evolve`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streams.envelope import Envelope, Payload
from streams.outcomes import RejectionCode


class Rejected(Exception):
    """Raised by `decide` to refuse a command; becomes a `command.rejected` event."""

    def __init__(self, code: RejectionCode, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.field = field


# decide(current state or None, command envelope) -> events' payloads (raise Rejected to refuse)
Decide = Callable[[Any, Envelope], Sequence[Payload]]
# evolve(current state or None, event envelope) -> new state (None when the aggregate is gone)
Evolve = Callable[[Any, Envelope], Any]


@dataclass(frozen=True)
class Aggregate:
    name: str
    decide: Decide
    evolve: Evolve
    # The type `evolve` returns (not counting None): snapshots (de)serialize state with pydantic's TypeAdapter over it,
    # so every field must be a type pydantic round-trips exactly (agents.snapshots; tests/test_snapshots.py).
    state_type: Any
    # Bump when `evolve` would fold the same events into a different state: older snapshots are then ignored.
    state_version: int = 1
