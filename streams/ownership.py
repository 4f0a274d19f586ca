"""Which team owns an aggregate, as the log says: the team of the actor on the event that brought it into being.

Part of the contract: the agents (which refuse a command of another team) and the API's read model (which answers
404 to another team) fold ownership from the same events by the same rule, so a replay reproduces it. Events
recorded before teams existed carry no team on their actor and read as `default` (streams.envelope.Actor).
"""

from __future__ import annotations

from streams.envelope import Envelope

# Events that bring an aggregate into being: the aggregate belongs to the team of the event's actor from then on.
# A later one (a new version of an adapter, another file of a fileset) leaves the owner as it is.
CREATED_BY = frozenset(
    {
        "workspace.created",
        "adapter.requested",
        "fileset.file_added",
        "deployment.created",
        "usage.recorded",
        "evaluation.requested",
    }
)
# Events after which an aggregate's name is free again: the next creation may be another team's.
ENDED_BY = frozenset({"workspace.deleted", "adapter.deleted"})
# Aggregates no team owns: the platform's (nodes and placement, API keys: admin routes only), and seed 004's
# directories, which hold every team's files (each file's team is recorded in the read model, per file).
UNOWNED = frozenset({"cluster", "api_key", "lora_dir"})


def owner_after(owner: str | None, event: Envelope) -> str | None:
    """The owning team of `event`'s aggregate once `event` is folded in (None: nobody's, it does not exist)."""
    if event.type in CREATED_BY and owner is None:
        return event.actor.team
    if event.type in ENDED_BY:
        return None
    return owner
