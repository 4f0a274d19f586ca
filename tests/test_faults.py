"""Faults against a real stack of its own (issue 11). One extra stack serves the whole module; the tests run in
file order. Each test prints what it measured (`pytest -s` shows it).

The session stack is never touched: these tests stop and kill its broker and its API.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import streams.catalog  # noqa: F401
from tests.services import external_services
from tests.support import Api, Stack, start_stack, stop_stack, wait_until

FAULT_STACK_ENV = {"LORAPLANE_NODE": "off"}
IN_FLIGHT = 1000
# The issue's bound for a write while the broker is down is 2 s; asserted with room for a loaded machine.
UNAVAILABLE_WITHIN_S = 5.0


@dataclass
class Running:
    """The module's stack; a test that restarts it puts the new one here."""

    data_dir: Path
    stack: Stack
    key: str


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with external_services() as external:
        if external:
            pytest.skip("these faults kill the embedded broker; with external services there is none to kill")
        data_dir = Path(tmp_path_factory.mktemp("faults"))
        stack = start_stack(data_dir, extra_env=FAULT_STACK_ENV)
        holder = Running(data_dir, stack, "")
        try:
            holder.key = stack.issue_key("admin", "faults")
            yield holder
        finally:
            left = stop_stack(holder.stack)
            assert not left, f"processes left behind: {left}"


@pytest.fixture()
def client(running: Running) -> Iterator[Api]:
    with Api(running.stack, running.key) as api:
        yield api


def _signal_child(stack: Stack, child: str, sig: signal.Signals) -> int:
    pid = stack.pids()[child]
    os.killpg(pid, sig)  # children run in process groups of their own
    return pid


def _timed_write(client: Api, name: str) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    answer = client.post("/v2/workspaces", json={"name": name})
    return answer, time.monotonic() - began


def test_writes_answer_503_quickly_while_the_broker_is_stalled_and_reads_go_on(client: Api, running: Running) -> None:
    before = f"before-{uuid.uuid4().hex[:6]}"
    assert client.post("/v2/workspaces", params={"wait": 30}, json={"name": before}).status_code == 201

    tansu = _signal_child(running.stack, "tansu", signal.SIGSTOP)  # the broker stops answering, connections stay open
    try:
        answers = [_timed_write(client, f"stalled-{uuid.uuid4().hex[:6]}-{i}") for i in range(5)]
        read_began = time.monotonic()
        read = client.get(f"/v2/workspaces/{before}")
        read_s = time.monotonic() - read_began
        listed = client.get("/v2/workspaces", params={"page_size": 100})
        ready = client.get("/readyz")
    finally:
        os.killpg(tansu, signal.SIGCONT)

    took = [round(s, 2) for _, s in answers]
    print(
        f"\nbroker stalled: writes answered {[a.status_code for a, _ in answers]} in {took} s; read in {read_s:.3f} s"
    )
    for answer, seconds in answers:
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["Retry-After"]) > 0
        assert seconds < UNAVAILABLE_WITHIN_S, f"a write took {seconds:.1f}s to answer while the broker was stalled"
        assert answer.json()["detail"][0]["type"] == "unavailable"
    # The first write was sent and not acknowledged: the answer says it may have been recorded, and where to look.
    first = answers[0][0]
    assert "may or may not have been recorded" in first.json()["detail"][0]["msg"]
    command_url = first.headers["Location"]
    assert read.status_code == 200 and read.json()["name"] == before
    assert listed.status_code == 200 and before in [w["name"] for w in listed.json()["data"]]
    assert ready.status_code == 503

    # Back: writes succeed again, and the unacknowledged command is answered from the log, whichever way it went.
    def writes_again() -> bool:
        return (
            client.post(
                "/v2/workspaces", params={"wait": 10}, json={"name": f"after-{uuid.uuid4().hex[:6]}"}
            ).status_code
            == 201
        )

    wait_until(writes_again, timeout=60, interval=0.5, message="writes to succeed once the broker is back")
    status = client.get(command_url)
    assert status.status_code == 200
    print(f"the unacknowledged command ended {status.json()['status']}")
