"""An agent killed mid-stream: after its restart no command is lost and none is applied twice."""

from __future__ import annotations

import collections
import os
import signal
import uuid

import streams.catalog  # noqa: F401
from streams.envelope import Actor, ActorType
from streams.serialization import encode, envelope_for, key_for
from streams.workspaces import CreateWorkspace
from tests.support import Api, Stack, events, produced, wait_until

COMMANDS = 1000


def test_worker_killed_mid_stream(stack: Stack, user: Api) -> None:
    prefix = f"crash-{uuid.uuid4().hex[:6]}"
    actor = Actor(type=ActorType.SYSTEM, id="test", name="crash-test")
    commands = [
        envelope_for(CreateWorkspace(name=f"{prefix}-{i}"), aggregate_id=f"{prefix}-{i}", actor=actor)
        for i in range(COMMANDS)
    ]
    worker_pid = stack.pids()["worker"]

    with produced(stack.bootstrap) as producer:
        producer.send_many("loraplane.commands", [(key_for(c), encode(c)) for c in commands])

    def created() -> int:
        return sum(1 for e in events(stack) if e["aggregate_id"].startswith(prefix))

    wait_until(
        lambda: user.get(f"/v2/commands/{commands[10].command_id}").json()["status"] != "pending",
        timeout=60,
        interval=0.02,
        message="the worker to start on the batch",
    )
    os.kill(worker_pid, signal.SIGKILL)
    assert created() < COMMANDS, "the worker finished before it was killed; the test proves nothing"

    wait_until(
        lambda: stack.pids().get("worker") not in (None, worker_pid),
        timeout=60,
        message="the supervisor to restart the worker",
    )
    wait_until(lambda: created() >= COMMANDS, timeout=180, interval=1, message="every command's outcome")

    mine = [e for e in events(stack) if e["aggregate_id"].startswith(prefix)]
    per_command = collections.Counter(e["command_id"] for e in mine)
    assert set(per_command) == {c.command_id for c in commands}, "a command was lost"
    assert set(per_command.values()) == {1}, "a command was applied twice"
    assert {e["type"] for e in mine} == {"workspace.created"}

    # and the read model agrees
    def projected() -> int:
        names: list[str] = []
        page = 1
        while batch := user.get("/v2/workspaces", params={"page": page, "page_size": 1000}).json()["data"]:
            names += [w["name"] for w in batch]
            page += 1
        return sum(1 for n in names if n.startswith(prefix))

    wait_until(lambda: projected() == COMMANDS, message="the read model")
