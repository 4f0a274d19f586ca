"""Load: many concurrent clients mixing reads and writes against `loraplane up` for a while (issue 11, part 4).

Run `python bench/load.py` (defaults: 200 clients, 60 s, a fifth of the requests writes). It starts the embedded
stack (`loraplane up` on free 127.0.0.1 ports in a temporary directory, no node agent), or uses a running one with
`--url` and `--key` (an admin key). Each client sends one request at a time, so at most `--clients` are in flight:

  reads:  `GET /v2/workspaces?page_size=20`, `GET /v2/workspaces/{a name written earlier}`, `GET /v2/commands/{id}`
  writes: `POST /v2/workspaces?wait=30` with a new name; write-to-outcome is the time until the answer says the
          outcome is projected (201), or, when the wait ran out (202), until `GET /v2/commands/{id}` says so.

First one client alone sends a few of each, for what a request costs without queueing. Afterwards every accepted
write is looked up (`GET /v2/workspaces/{name}`): one missing is a lost command. It prints
the answers by status, p50/p99 of reads and of write-to-outcome, and exits 1 on any 5xx, transport error or lost
command. The clients are aiohttp's: at 200 connections httpx's pool was the bottleneck here (69 requests/s against
474 with aiohttp, reads only, same stack).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from tests.support import start_stack, stop_stack

WRITE_WAIT_S = 30
OUTCOME_TIMEOUT_S = 120
BASELINE_READS = 100
BASELINE_WRITES = 10


@dataclass
class Tally:
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    reads: list[float] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)  # write -> outcome
    names: list[str] = field(default_factory=list)  # accepted writes
    commands: list[str] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    unresolved: int = 0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def call(client: aiohttp.ClientSession, method: str, path: str, **options: Any) -> tuple[int, Any]:
    """One request; its status and its JSON body (None when it has none)."""
    async with client.request(method, path, **options) as answer:
        body = await answer.read()
        try:
            return answer.status, json.loads(body) if body else None
        except ValueError:
            return answer.status, None


async def write(client: aiohttp.ClientSession, prefix: str, tally: Tally) -> None:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    began = time.monotonic()
    status, body = await call(client, "POST", "/v2/workspaces", params={"wait": WRITE_WAIT_S}, json={"name": name})
    tally.statuses[f"{status} POST"] += 1
    if status == 201:
        tally.writes.append(time.monotonic() - began)
        tally.names.append(name)
        return
    if status != 202:
        return
    tally.names.append(name)
    command = body["command_id"]
    tally.commands.append(command)
    deadline = began + OUTCOME_TIMEOUT_S
    while time.monotonic() < deadline:
        status, body = await call(client, "GET", f"/v2/commands/{command}")
        tally.statuses[f"{status} GET command (after a 202)"] += 1
        if status == 200 and body["status"] != "pending":
            tally.writes.append(time.monotonic() - began)
            return
        await asyncio.sleep(0.2)
    tally.unresolved += 1


async def read(client: aiohttp.ClientSession, tally: Tally, rng: random.Random) -> None:
    kind = rng.random()
    began = time.monotonic()
    if kind < 0.4 or not tally.names:
        status, _ = await call(client, "GET", "/v2/workspaces", params={"page_size": 20})
        what = "GET list"
    elif kind < 0.8 or not tally.commands:
        status, _ = await call(client, "GET", f"/v2/workspaces/{rng.choice(tally.names)}")
        what = "GET one"
    else:
        status, _ = await call(client, "GET", f"/v2/commands/{rng.choice(tally.commands)}")
        what = "GET command"
    tally.reads.append(time.monotonic() - began)
    tally.statuses[f"{status} {what}"] += 1


async def one_client(
    client: aiohttp.ClientSession, prefix: str, until: float, write_ratio: float, tally: Tally, seed: int
) -> None:
    rng = random.Random(seed)
    while time.monotonic() < until:
        try:
            if rng.random() < write_ratio:
                await write(client, prefix, tally)
            else:
                await read(client, tally, rng)
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.errors[type(exc).__name__] += 1


async def lost_writes(client: aiohttp.ClientSession, names: list[str]) -> list[str]:
    gate = asyncio.Semaphore(32)

    async def missing(name: str) -> str | None:
        async with gate:
            deadline = time.monotonic() + OUTCOME_TIMEOUT_S
            while True:
                status, _ = await call(client, "GET", f"/v2/workspaces/{name}")
                if status == 200:
                    return None
                if time.monotonic() > deadline:
                    return name
                await asyncio.sleep(1.0)

    return [name for name in await asyncio.gather(*(missing(n) for n in names)) if name is not None]


async def baseline(client: aiohttp.ClientSession, prefix: str) -> Tally:
    """One client alone, one request at a time: what a read and a write cost without queueing behind others."""
    alone = Tally()
    rng = random.Random(0)
    for _ in range(BASELINE_WRITES):
        await write(client, f"{prefix}-alone", alone)
    for _ in range(BASELINE_READS):
        await read(client, alone, rng)
    return alone


async def run(url: str, key: str, args: argparse.Namespace) -> int:
    prefix = f"load-{uuid.uuid4().hex[:6]}"
    tally = Tally()
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=args.clients)
    timeout = aiohttp.ClientTimeout(total=WRITE_WAIT_S + 30)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector, timeout=timeout) as client:
        alone = await baseline(client, prefix)
        print(
            f"one client alone: reads p50 {pct(alone.reads, 50) * 1000:.0f} ms, "
            f"p99 {pct(alone.reads, 99) * 1000:.0f} ms ({len(alone.reads)}); "
            f"write-to-outcome p50 {pct(alone.writes, 50) * 1000:.0f} ms ({len(alone.writes)})"
        )
        began = time.monotonic()
        until = began + args.seconds
        await asyncio.gather(
            *(one_client(client, prefix, until, args.write_ratio, tally, seed) for seed in range(args.clients))
        )
        elapsed = time.monotonic() - began
        lost = await lost_writes(client, tally.names)

    print(f"{args.clients} clients for {elapsed:.0f} s ({args.seconds:g} s of new requests), {url}")
    for status, n in sorted(tally.statuses.items()):
        print(f"  {status}: {n}")
    for error, n in sorted(tally.errors.items()):
        print(f"  transport error {error}: {n}")
    print(
        f"reads: {len(tally.reads)} ({len(tally.reads) / elapsed:.0f}/s), "
        f"p50 {pct(tally.reads, 50) * 1000:.0f} ms, p99 {pct(tally.reads, 99) * 1000:.0f} ms"
    )
    print(
        f"writes: {len(tally.names)} accepted ({len(tally.names) / elapsed:.1f}/s), write-to-outcome "
        f"p50 {pct(tally.writes, 50) * 1000:.0f} ms, p99 {pct(tally.writes, 99) * 1000:.0f} ms; "
        f"{len(tally.commands)} answered 202 first"
    )
    print(f"5xx: {tally.server_errors}; lost commands: {len(lost)}; outcomes not seen in time: {tally.unresolved}")
    failed = tally.server_errors or lost or tally.errors or tally.unresolved
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200, help="concurrent clients (one request each at a time)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long clients start new requests")
    parser.add_argument("--write-ratio", type=float, default=0.2, help="share of requests that are writes")
    parser.add_argument("--url", help="a running stack's API (default: start one)")
    parser.add_argument("--key", help="an admin key of that stack (with --url)")
    args = parser.parse_args()
    if args.url:
        if not args.key:
            parser.error("--url needs --key")
        sys.exit(asyncio.run(run(args.url, args.key, args)))
    with tempfile.TemporaryDirectory(prefix="loraplane-load-") as tmp:
        stack = start_stack(Path(tmp) / "stack", extra_env={"LORAPLANE_NODE": "off"})
        try:
            code = asyncio.run(run(stack.api_url, stack.issue_key("admin", "load"), args))
        finally:
            stop_stack(stack)
    sys.exit(code)


if __name__ == "__main__":
    main()
