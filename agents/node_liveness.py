"""Node liveness without an event per heartbeat: last-seen times in memory, the verdict as `cluster.check_nodes`.

The rule:
- Heartbeats (`node.heartbeat` commands, keyed by the cluster id) all reach the one worker that owns the cluster's
  command partition; that worker's tracker records when it heard each node, in memory only.
- Only the owner judges. When it gains the partition it knows nothing yet, so every registered node counts as
  heard at that moment: a node is judged after a full timeout of this owner's own silence, never on a stale clock.
  Losing the partition forgets everything.
- Every `interval` the owner sends `cluster.check_nodes` with `checked_at`, the timeout and the last-seen times
  when some node has been silent longer than the timeout. The cluster aggregate decides `node.dropped` (the event
  records the last-seen time it judged on) and re-places the node's instances in the same decision. A replay folds
  those events and judges nothing again, so no clock and no heartbeat is needed to reproduce the allocations.
- A lost node's next heartbeat is a `node.rejoined` event, and the queue is placed on it. A registration counts as
  a heartbeat: a node that joins after the owner took over is judged from its registration.

Wired in agents/app.py: every command the worker reads passes `heard_message`, and a timer checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from aiokafka.partitioner import murmur2

from streams.cluster import CLUSTER_ID, CheckNodes, NodeHeartbeat, RegisterNode
from streams.serialization import TYPE_HEADER, MessageDecodeError, decode

# A registration is a sign of life too: a node registered after this owner took over is judged from then.
SIGNS_OF_LIFE = frozenset({b"node.heartbeat", b"node.register"})


def cluster_partition(partitions: int) -> int:
    """The commands partition the cluster's commands go to (Kafka's default partitioner on the key)."""
    return (murmur2(CLUSTER_ID.encode()) & 0x7FFFFFFF) % partitions


class NodeLiveness:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._last_seen: dict[str, datetime] = {}
        self._owned_since: datetime | None = None

    def ownership(self, owns: bool, now: datetime) -> None:
        if owns and self._owned_since is None:
            self._owned_since = now
        elif not owns:
            self._owned_since = None
            self._last_seen.clear()

    def heard(self, node_id: str, at: datetime) -> None:
        if (seen := self._last_seen.get(node_id)) is None or at > seen:
            self._last_seen[node_id] = at

    def heard_message(self, value: bytes | None, headers: Sequence[tuple[str, bytes]], at: datetime) -> None:
        """Take a raw command off the topic. Heartbeats and registrations are read; other commands are passed over by
        their type header, before decoding (a message without one is decoded to find out)."""
        types = [v for k, v in headers if k == TYPE_HEADER]
        if types and not any(t in SIGNS_OF_LIFE for t in types):
            return
        try:
            payload = decode(value).payload
        except MessageDecodeError:
            return  # the processor dead-letters it
        if isinstance(payload, NodeHeartbeat | RegisterNode):
            self.heard(payload.node_id, at)

    def check(self, live_nodes: Iterable[str], now: datetime) -> CheckNodes | None:
        """The command to send now, or None: not the owner, or no node silent past the timeout."""
        if self._owned_since is None:
            return None
        owned_since = self._owned_since
        last_seen = {node: max(self._last_seen.get(node, owned_since), owned_since) for node in sorted(live_nodes)}
        if not any((now - seen).total_seconds() > self.timeout_s for seen in last_seen.values()):
            return None
        return CheckNodes(checked_at=now, timeout_s=self.timeout_s, last_seen=last_seen)
