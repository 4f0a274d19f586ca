"""`loraplane events verify --snapshot WHO`: does the newest snapshot hold exactly the state a fold of the log from
offset 0 up to its positions gives?"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import TopicPartition

from agents import snapshots
from agents.aggregate import Aggregate
from agents.cluster import CLUSTER
from agents.deployments import DEPLOYMENTS
from agents.snapshotting import Snapshotter
from agents.state import AgentState
from infra.kafka import read_events_between
from infra.settings import Settings
from streams.topics import EVENTS


def aggregates_of(who: str) -> Mapping[str, Aggregate]:
    """What `who` (`worker` or `node-<id>`) folds."""
    if who.startswith("node-"):
        return {CLUSTER.name: CLUSTER, DEPLOYMENTS.name: DEPLOYMENTS}
    from agents.app import AGGREGATES

    return {a.name: a for a in AGGREGATES}


async def check_newest(settings: Settings, who: str) -> tuple[int, list[str]]:
    """(the snapshot's total offset, what differs); LookupError when `who` has no usable snapshot."""
    aggregates = aggregates_of(who)
    snapshotter = Snapshotter.for_settings(settings, who)
    if snapshotter is None:
        raise LookupError("snapshots are off (LORAPLANE_SNAPSHOT_EVERY=0) or there is no S3")
    found = await snapshotter.newest(aggregates, settings.handled_commands_window_s)
    if found is None:
        raise LookupError(f"no usable snapshot under snapshots/{who}/")
    ends = {TopicPartition(EVENTS.name, p): offset for p, offset in found.positions.items()}
    state = AgentState(dict(aggregates))
    for event in await read_events_between(settings, dict.fromkeys(ends, 0), ends):
        state.apply(event)
    # The handled commands kept depend on the order partitions were folded in; the aggregates do not.
    problems = [p for p in snapshots.differences(state, found) if not p.startswith("handled commands")]
    return found.total_offset, problems


def run(settings: Settings, who: str) -> tuple[int, list[str]]:
    return asyncio.run(check_newest(settings, who))
