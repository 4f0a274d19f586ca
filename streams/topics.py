"""Every topic loraplane uses, declared once: name, partitions and broker configs."""

from __future__ import annotations

from dataclasses import dataclass, field

PARTITIONS = 6


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = PARTITIONS
    replication_factor: int = 1
    configs: dict[str, str] = field(default_factory=dict)


# The log of record: kept forever, never compacted, keyed by aggregate id.
EVENTS = TopicSpec(
    "loraplane.events",
    configs={"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"},
)
# Commands are keyed by aggregate id too, so one aggregate's commands arrive in order.
COMMANDS = TopicSpec("loraplane.commands", configs={"retention.ms": str(7 * 24 * 3600 * 1000)})
# Messages no handler could read, with the reason in the `x-deadletter-reason` header.
DEADLETTER = TopicSpec("loraplane.deadletter", partitions=1, configs={"retention.ms": "-1"})

ALL_TOPICS: tuple[TopicSpec, ...] = (EVENTS, COMMANDS, DEADLETTER)

DEADLETTER_REASON_HEADER = "x-deadletter-reason"
DEADLETTER_SOURCE_HEADER = "x-deadletter-source"
