"""Faults against a real stack of its own (issue 11, and README "Reliability"): the broker stalled and killed with
commands in flight, S3 stopped during uploads and artifact jobs, the API killed during a 500 MB upload, the node
agent killed while its vLLM runs, the read model's database deleted while the stack is stopped.

One extra `loraplane up` (with a node agent for a CPU vLLM) serves the whole module, beside the session's stack,
which these tests never touch; they run in file order and the last one restarts the stack. Each prints what it
measured (`pytest -s` shows it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

import streams.catalog  # noqa: F401
from infra.kafka_admin import tcp_reachable
from infra.s3 import make_client
from infra.s3_objects import object_exists
from infra.settings import Settings
from infra.staging import (
    STAGING_PREFIX,
    UPLOADS_PREFIX,
    SweepReport,
    mark_staged,
    new_upload_key,
    release_staged,
    staging_marker,
    sweep_staging,
)
from streams.envelope import Actor, ActorType
from streams.naming import MAX_UPLOAD_BYTES
from streams.serialization import encode, envelope_for, key_for
from streams.workspaces import CreateWorkspace
from tests.artifacts import kohya_lora, large_kohya_lora
from tests.fake_hub import FakeHub, FakeRepo
from tests.services import external_services
from tests.support import (
    Api,
    Stack,
    deploy_and_wait_running,
    events,
    produced,
    start_stack,
    stop_stack,
    wait_until,
)
from tests.tiny_llama import cpu_deploy_body, files_of, make_lora_adapter, make_tiny_llama

FAULT_STACK_ENV = {
    # Its own node agent runs a real CPU vLLM in the node-agent test (no other test here places anything on it).
    "LORAPLANE_NODE_ID": "fault-cpu-node",
    "LORAPLANE_NODE_DEVICES": "cpu:1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # The staging sweep runs often and takes an upload unfinished for 10 s for abandoned (an hour by default).
    "LORAPLANE_STAGING_SWEEP_EVERY_S": "2",
    "LORAPLANE_STAGING_ABANDONED_UPLOAD_S": "10",
}
IN_FLIGHT = 1000
MiB = 1024 * 1024
BOUNDARY = "lp-fault-boundary"
KILL_AFTER_BYTES = 60 * MiB  # of a 500 MB upload: several parts on S3 already
ADMIN_UPLOAD = "/api/v1/admin/lora/upload"
JOBS = 3
FAULT_BASE_REPO = "loraplane-tests/fault-llama"
FAULT_SERVED = "fault-llama"
FAULT_LORA = "fault-lora"
COMPLETION = {"model": FAULT_LORA, "prompt": "Hello", "max_tokens": 4}
# The issue's bound for a write while the broker is down is 2 s; asserted with room for a loaded machine.
UNAVAILABLE_WITHIN_S = 5.0


@dataclass
class Running:
    """The module's stack; a test that restarts it puts the new one here."""

    data_dir: Path
    stack: Stack
    key: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, hub_server: FakeHub) -> Iterator[Running]:
    with external_services() as external:
        if external:
            pytest.skip("these faults kill the embedded broker; with external services there is none to kill")
        data_dir = Path(tmp_path_factory.mktemp("faults"))
        stack = start_stack(data_dir, extra_env={**FAULT_STACK_ENV, "HF_ENDPOINT": hub_server.url})
        holder = Running(data_dir, stack, "", {"HF_ENDPOINT": hub_server.url})
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


def test_broker_killed_with_a_thousand_commands_in_flight(client: Api, running: Running) -> None:
    stack = running.stack
    prefix = f"inflight-{uuid.uuid4().hex[:6]}"
    actor = Actor(type=ActorType.SYSTEM, id="test", name="fault-test")
    commands = [
        envelope_for(CreateWorkspace(name=f"{prefix}-{i}"), aggregate_id=f"{prefix}-{i}", actor=actor)
        for i in range(IN_FLIGHT)
    ]
    with produced(stack.bootstrap) as producer:
        producer.send_many("loraplane.commands", [(key_for(c), encode(c)) for c in commands])

    wait_until(
        lambda: client.get(f"/v2/commands/{commands[10].command_id}").json()["status"] != "pending",
        timeout=60,
        interval=0.02,
        message="the worker to start on the commands",
    )
    # Just before the kill: how many of the last commands sent are still undecided (the worker takes them in rounds).
    tail = commands[-50:]
    undecided = sum(1 for c in tail if client.get(f"/v2/commands/{c.command_id}").json()["status"] == "pending")
    killed_at = time.monotonic()
    tansu = _signal_child(stack, "tansu", signal.SIGKILL)
    # While it is down and starting again: writes answer quickly, 503 or (once it is back) 202; never 500.
    during: list[tuple[int, float]] = []
    while stack.pids().get("tansu") in (None, tansu):
        answer, seconds = _timed_write(client, f"{prefix}-during-{len(during)}")
        during.append((answer.status_code, seconds))
    # It restarts within a second: hold the new one stopped for a while, so the outage is long enough to be felt. Only
    # once it listens: stopped before it binds its port, it would refuse the reads made right after it goes on.
    wait_until(
        lambda: asyncio.run(tcp_reachable(stack.bootstrap, 1.0)), timeout=30, message="the restarted broker to listen"
    )
    restarted = _signal_child(stack, "tansu", signal.SIGSTOP)
    try:
        held: list[tuple[int, float]] = []
        for i in range(3):
            answer, seconds = _timed_write(client, f"{prefix}-held-{i}")
            held.append((answer.status_code, seconds))
        read = client.get(f"/v2/commands/{commands[0].command_id}")
    finally:
        os.killpg(restarted, signal.SIGCONT)
    assert [code for code, _ in held] == [503, 503, 503], held
    assert read.status_code == 200 and read.json()["status"] == "succeeded"

    wanted = {c.command_id for c in commands}

    def outcomes() -> int:
        return sum(
            1
            for e in events(stack)
            if e["aggregate_id"].startswith(f"{prefix}-") and "-during-" not in e["aggregate_id"]
        )

    wait_until(lambda: outcomes() >= IN_FLIGHT, timeout=300, interval=1, message="every command's outcome")
    recovered_s = time.monotonic() - killed_at
    mine = [e for e in events(stack) if e["command_id"] in wanted]
    # Tansu has no idempotent producer: a batch whose acknowledgment the kill cut off is sent again, and the log may
    # hold it twice, record for record (same event ids and versions, which every fold and projection skips). A
    # second decision of one command would be a different event.
    per_command = collections.Counter(e["command_id"] for e in {e["id"]: e for e in mine}.values())
    for event in mine:
        assert event == next(e for e in mine if e["id"] == event["id"]), "one event id, two different records"
    print(
        f"\nbroker SIGKILLed with {undecided} of the last 50 of {IN_FLIGHT} commands undecided; every outcome "
        f"{recovered_s:.1f} s after the kill; writes while it restarted: {_rounded(during)}, "
        f"while held stopped: {_rounded(held)}"
    )
    assert undecided > 0, "the worker had decided everything before the kill: the test proves nothing"
    assert set(per_command) == {c.command_id for c in commands}, "a command was lost"
    assert set(per_command.values()) == {1}, "a command was applied twice"
    assert {e["type"] for e in mine} == {"workspace.created"}
    assert all(code in (202, 503) for code, _ in during + held), during
    assert all(seconds < UNAVAILABLE_WITHIN_S for _, seconds in during + held), during
    # every status the API answers agrees with the log
    for command in commands[:: IN_FLIGHT // 50]:
        assert client.get(f"/v2/commands/{command.command_id}").json()["status"] == "succeeded"


def _staging(stack: Stack) -> tuple[list[str], list[str]]:
    """What uploads left staged in the stack's bucket: objects under `staging/` (markers of uploads not yet stored,
    and whole uploads of earlier versions), and multipart uploads never completed (under `blobs/uploads/`, where
    uploads stream, or `staging/`)."""
    env = stack.cli_env()
    s3 = make_client(Settings.model_validate({"s3_endpoint": env["S3_ENDPOINT"]}))
    bucket = env.get("S3_BUCKET", "loraplane")
    objects = [o.object_name or "" for o in s3.list_objects(bucket, prefix=STAGING_PREFIX, recursive=True)]
    uploads = [
        u.object_name
        for prefix in (UPLOADS_PREFIX, STAGING_PREFIX)
        for u in s3._list_multipart_uploads(bucket, prefix=prefix).uploads
    ]
    return objects, uploads


def test_an_api_killed_during_a_500_mb_upload_leaves_nothing_staged_after_the_sweep(running: Running) -> None:
    stack = running.stack
    url = urlsplit(stack.api_url)
    api = stack.pids()["api"]
    sent = 0
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(
            (
                f"POST /api/v1/admin/lora/upload HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {running.key}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        for piece in _upload_body(MAX_UPLOAD_BYTES - MiB):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
            if sent >= KILL_AFTER_BYTES:
                break
        # parts of it are on S3 by now, in a multipart upload the API has not completed
        wait_until(lambda: _staging(stack)[1], timeout=30, message="the upload's parts on S3")
        killed_at = time.monotonic()
        os.killpg(api, signal.SIGKILL)
    left_by_the_kill = _staging(stack)
    assert left_by_the_kill[1], "the kill left no unfinished upload: the test proves nothing"

    wait_until(lambda: stack.pids().get("api") not in (None, api), timeout=60, message="the API restarted")
    wait_until(lambda: _staging(stack) == ([], []), timeout=90, interval=1, message="the staging sweep")
    swept_s = time.monotonic() - killed_at
    print(
        f"\nAPI SIGKILLed after {sent // MiB} MiB of a {MAX_UPLOAD_BYTES // MiB} MiB upload: "
        f"{len(left_by_the_kill[1])} unfinished upload(s) left, swept {swept_s:.1f} s after the kill"
    )
    wait_until(lambda: httpx.get(f"{stack.api_url}/readyz").status_code == 200, timeout=60, message="the API ready")


def test_the_sweep_removes_a_staged_object_no_command_named_once_it_is_old(running: Running) -> None:
    """A process killed between staging an upload and publishing its command leaves a complete upload and its
    marker: the sweep keeps them while a job may still want them (a day by default) and removes both after. A whole
    upload staged by an earlier version (`staging/{uuid}`) goes the same way; a stored upload (no marker) stays."""
    env = running.stack.cli_env()
    s3 = make_client(Settings.model_validate({"s3_endpoint": env["S3_ENDPOINT"]}))
    bucket = env.get("S3_BUCKET", "loraplane")
    legacy = f"{STAGING_PREFIX}orphan-{uuid.uuid4().hex}"
    s3.put_object(bucket, legacy, io.BytesIO(b"bytes no command names"), 22)
    orphan, stored = new_upload_key(), new_upload_key()
    for key in (orphan, stored):
        mark_staged(s3, bucket, key)
        s3.put_object(bucket, key, io.BytesIO(b"bytes of an upload"), 18)
    release_staged(s3, bucket, stored)
    day = 86400.0

    def sweep(now: datetime) -> SweepReport:
        return sweep_staging(s3, bucket, now=now, abandoned_upload_s=day, orphan_s=day)

    assert sweep(datetime.now(UTC)).removed_objects == 0
    assert {legacy, staging_marker(orphan)} <= set(_staging(running.stack)[0])
    assert sweep(datetime.now(UTC) + timedelta(days=1, minutes=1)).removed_objects == 2
    assert not {legacy, staging_marker(orphan)} & set(_staging(running.stack)[0])
    assert not object_exists(s3, bucket, orphan) and object_exists(s3, bucket, stored)
    s3.remove_object(bucket, stored)


def _upload_body(size: int) -> Iterator[bytes]:
    yield (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="entity_type"\r\n\r\nstyles\r\n'
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="killed.safetensors"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    header, _ = large_kohya_lora(size)
    yield header
    block = bytes(MiB)
    for _ in range(size // MiB):
        yield block
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_s3_stopped_during_uploads_and_artifact_jobs(client: Api, running: Running) -> None:
    stack = running.stack
    names = [f"s3-{uuid.uuid4().hex[:8]}-{i}.safetensors" for i in range(JOBS)]
    for i, name in enumerate(names):
        accepted = client.post(
            ADMIN_UPLOAD,
            params={"wait": 0},
            files={"file": (name, kohya_lora(seed=100 + i))},
            data={"entity_type": "styles"},
        )
        assert accepted.status_code == 202, accepted.text
    # S3 stops with the jobs in flight (embedded, the broker's log is on S3: it stalls too)
    seaweed = _signal_child(stack, "seaweedfs", signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        refused, upload_s = None, 0.0
        began = time.monotonic()
        refused = client.post(
            ADMIN_UPLOAD,
            params={"wait": 0},
            files={"file": (f"during-{uuid.uuid4().hex[:8]}.safetensors", kohya_lora(seed=99))},
            data={"entity_type": "styles"},
        )
        upload_s = time.monotonic() - began
        write, write_s = _timed_write(client, f"s3-down-{uuid.uuid4().hex[:6]}")
        read = client.get("/v2/workspaces", params={"page_size": 5})
        held_s = time.monotonic() - stopped_at
    finally:
        os.killpg(seaweed, signal.SIGCONT)
    resumed_at = time.monotonic()
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert write.status_code == 503, write.text
    assert read.status_code == 200

    def stored() -> bool:
        return set(f"styles/{n}" for n in names) <= set(_listed(client, "styles"))

    wait_until(stored, timeout=120, interval=0.5, message="every upload's job to finish")
    jobs_s = time.monotonic() - resumed_at
    wait_until(lambda: _staging(stack) == ([], []), timeout=60, interval=0.5, message="staging/ empty")
    print(
        f"\nS3 SIGSTOPped for {held_s:.1f} s with {JOBS} upload jobs in flight: an upload answered "
        f"{refused.status_code} in {upload_s:.1f} s, a write {write.status_code} in {write_s:.1f} s, a read "
        f"{read.status_code}; the jobs finished {jobs_s:.1f} s after S3 resumed; staging/ empty"
    )


def _listed(client: Api, entity_type: str) -> list[str]:
    body = client.get("/api/v1/admin/lora", params={"entity_type": entity_type, "page_size": 1000}).json()
    return [item["partial_path"] for item in body["data"]]


def _engines(served_name: str) -> list[psutil.Process]:
    """The vLLM servers of a served name alive now (one per process group: a server's own children are not counted)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            if "vllm.entrypoints.openai.api_server" in cmdline and served_name in cmdline and proc.status() != "zombie":
                found.setdefault(os.getpgid(proc.pid), proc)
    return list(found.values())


def _port_of(engine: psutil.Process) -> int:
    # The command line as read when the engine was listed: by now it may have exited (a zombie has none).
    cmdline = engine.info["cmdline"]
    return int(cmdline[cmdline.index("--port") + 1])


@pytest.mark.e2e
def test_a_node_agent_killed_while_its_vllm_runs_leaves_one_engine_running_with_its_adapters(
    client: Api, running: Running, hub_server: FakeHub, tmp_path: Path
) -> None:
    stack = running.stack
    base = make_tiny_llama(tmp_path / "base")
    hub_server.repos[FAULT_BASE_REPO] = FakeRepo.single(files_of(base))
    lora = make_lora_adapter(base, tmp_path / "lora", seed=5, rank=8, base_model_name=FAULT_BASE_REPO)
    hub_server.repos[f"loraplane-tests/{FAULT_LORA}"] = FakeRepo.single(files_of(lora))
    registered = client.post(
        "/api/v1/lora",
        params={"wait": 60},
        json={
            "model_source": "HF_HUB",
            "model_name": f"loraplane-tests/{FAULT_LORA}",
            "name": FAULT_LORA,
            "base_model_name": FAULT_BASE_REPO,
        },
    )
    assert registered.status_code == 200, registered.text
    deployed = deploy_and_wait_running(client, cpu_deploy_body(FAULT_SERVED, FAULT_BASE_REPO), 900)
    deploy_id = deployed["deploy_id"]
    try:
        attached = client.post(
            "/deploy/lora", params={"wait": 120}, json={"deploy_id": deploy_id, "lora_name": FAULT_LORA}
        )
        assert attached.status_code == 200, attached.text
        [before] = _engines(FAULT_SERVED)

        node = stack.pids()["node"]
        # The engine hangs (as one does that drains long requests before it exits): it outlives its agent for as long
        # as the new agent lets it.
        os.killpg(before.pid, signal.SIGSTOP)
        killed_at = time.monotonic()
        os.killpg(node, signal.SIGKILL)  # the agent only (its engines run in groups of their own)
        most = 1
        old_gone_s: float | None = None

        def recovered() -> dict[str, Any] | None:
            nonlocal most, old_gone_s
            engines = _engines(FAULT_SERVED)
            most = max(most, len(engines))
            if old_gone_s is None and all(e.pid != before.pid for e in engines):
                old_gone_s = time.monotonic() - killed_at
            assert len(engines) <= 1, f"two engines on the node's one device at once: {engines}"
            if stack.pids().get("node") in (None, node) or not engines:
                return None
            body = client.get(f"/deploy/{deploy_id}").json()
            [instance] = body["instance_details"]
            loaded = [a["name"] for a in instance["adapters"] if a["status"] == "loaded"]
            # the instance's endpoint is the live engine's (the old one adopted, or a new one started) ...
            serves = (instance["endpoint"] or "").endswith(f":{_port_of(engines[0])}")
            if body["status"] != "running" or not serves or FAULT_LORA not in loaded:
                return None
            # ... and it answers with the LoRA, through the gateway (the read model alone may be stale)
            with contextlib.suppress(httpx.TimeoutException):
                answer = client.post("/v1/completions", json=COMPLETION, timeout=10)
                return body if answer.status_code == 200 else None
            return None

        body = wait_until(recovered, timeout=600, interval=0.2, message="the instance running again with its LoRA")
        recovered_s = time.monotonic() - killed_at
        engines = _engines(FAULT_SERVED)
        print(
            f"\nnode agent SIGKILLed while its vLLM hung (SIGSTOP): the old engine "
            f"{'gone' if old_gone_s is not None else 'adopted'}"
            f"{f' {old_gone_s:.1f} s after the kill' if old_gone_s is not None else ''}; running again with its LoRA "
            f"{recovered_s:.1f} s after the kill; at most {most} engine(s) at once"
        )
        assert most == 1, "two engines ran on the node's one device at once"
        assert len(engines) == 1
        assert body["instance_details"][0]["endpoint"]
    finally:
        with contextlib.suppress(ProcessLookupError, UnboundLocalError):
            os.killpg(before.pid, signal.SIGKILL)  # whatever the test left hanging
        assert client.delete(f"/deploy/{deploy_id}", params={"wait": 120}).status_code == 204
    wait_until(lambda: not _engines(FAULT_SERVED), timeout=120, message="no engine left after the delete")


def _rounded(answers: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(code, round(seconds, 2)) for code, seconds in answers]


def _all_workspaces(client: Api) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = 1
    while batch := client.get("/v2/workspaces", params={"page": page, "page_size": 1000}).json()["data"]:
        out += batch
        page += 1
    return out


def test_the_read_model_deleted_while_stopped_is_rebuilt_by_replay_at_start(running: Running) -> None:
    with Api(running.stack, running.key) as client:
        for i in range(3):  # besides what the tests before this one wrote (over a thousand)
            made = client.post("/v2/workspaces", params={"wait": 30}, json={"name": f"kept-{uuid.uuid4().hex[:6]}-{i}"})
            assert made.status_code == 201, made.text
        before = _all_workspaces(client)
    left = stop_stack(running.stack)
    assert not left, f"processes left behind: {left}"
    databases = list(running.data_dir.glob("readmodel.db*"))
    assert databases, "no read-model database to delete"
    for path in databases:
        path.unlink()

    began = time.monotonic()
    running.stack = start_stack(running.data_dir, extra_env={**FAULT_STACK_ENV, **running.env})
    ready_s = time.monotonic() - began
    with Api(running.stack, running.key) as client:
        # the key itself is in the read model only through the replay
        wait_until(lambda: client.get("/v2/workspaces").status_code == 200, timeout=120, message="the key replayed")
        wait_until(lambda: len(_all_workspaces(client)) >= len(before), timeout=300, interval=1, message="the replay")
        rebuilt_s = time.monotonic() - began
        after = _all_workspaces(client)
        # and the pipeline takes writes again (this also lets the new worker finish joining its group: a worker
        # stopped in the middle of its join does not stop on SIGTERM, and is killed 10 s later)
        name = f"after-replay-{uuid.uuid4().hex[:6]}"
        again = client.post("/v2/workspaces", json={"name": name})
        assert again.status_code == 202, again.text
        wait_until(lambda: client.get(f"/v2/workspaces/{name}").status_code == 200, timeout=120, message="a write")
        writes_s = time.monotonic() - began
    print(
        f"\nread model rebuilt: ready {ready_s:.1f} s, {len(after)} workspaces back {rebuilt_s:.1f} s after the start;"
        f" a new write decided {writes_s:.1f} s after it"
    )
    assert after == before
