"""The `loraplane` console script: the one place that wires the parts together."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from infra.settings import Settings, get_settings

STACK_ENV = Path("run") / "stack.env"


def _load_stack_env(data_dir: Path) -> None:
    """Let commands run beside `loraplane up` find its broker and S3 without exporting anything."""
    path = data_dir / STACK_ENV
    if "KAFKA_BOOTSTRAP_SERVERS" in os.environ or not path.exists():
        return
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key and key not in os.environ:
            os.environ[key] = value


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "data_dir", None):
        os.environ["LORAPLANE_DATA_DIR"] = str(args.data_dir)
    get_settings.cache_clear()
    if args.command != "up":  # `up` makes the stack that file describes
        _load_stack_env(get_settings().data_dir)
    get_settings.cache_clear()
    return get_settings()


def _say(line: str) -> None:
    print(f"[loraplane] {line}", flush=True)


# --- up ---------------------------------------------------------------------------------------


async def _up(settings: Settings) -> int:
    import httpx

    from infra.local_stack import LocalStack
    from infra.processes import ChildSpec

    data_dir = settings.data_dir.resolve()
    stack = LocalStack(settings, log=_say)
    keeper: asyncio.Task[None] | None = None
    # Until run_until_signal() takes over, a signal cancels the start-up (and `finally` cleans up).
    # Installed first thing: a shell starts background jobs with SIGINT ignored.
    loop = asyncio.get_running_loop()
    starting = asyncio.current_task()
    assert starting is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, starting.cancel)
    try:
        env = await stack.start_services()
        (data_dir / "run").mkdir(parents=True, exist_ok=True)
        (data_dir / STACK_ENV).write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        os.chmod(data_dir / STACK_ENV, 0o600)
        me = [sys.executable, "-m", "infra.cli"]
        _say("starting agents (Faust worker)")
        # One static member id per data directory: the supervisor's restarts of the worker, and the next `up` on the
        # same data, keep it (and so its partitions), while two stacks sharing a broker never fence each other's
        # workers. (One per `up` left the last run's member in the group, and the broker never gave the new one its
        # partitions: commands went undecided after a restart.)
        data_key = hashlib.sha256(str(data_dir).encode()).hexdigest()[:8]
        instance_id = f"{socket.gethostname()}-{data_key}-worker"
        await stack.start_child(ChildSpec("worker", [*me, "worker"], env={"LORAPLANE_WORKER_INSTANCE_ID": instance_id}))
        _say(f"starting API on http://{settings.api_host}:{settings.api_port}")
        await stack.start_child(ChildSpec("api", [*me, "api"]))
        if settings.node_enabled:
            _say("starting a node agent (vLLM on this machine's devices; LORAPLANE_NODE=off to skip)")
            await stack.start_child(ChildSpec("node", [*me, "node"]))
        base = f"http://{settings.api_host}:{settings.api_port}"
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                try:
                    if (await client.get(f"{base}/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() - started > 120:
                    _say("the API did not become ready in 120 s; see the logs under " + str(data_dir / "logs"))
                    return 1
                await asyncio.sleep(0.3)
        _say(f"ready in {time.monotonic() - started:.1f}s")
        _say(f"  API:      {base}  (OpenAPI: {base}/schema, Swagger UI: {base}/schema/swagger)")
        _say(f"  broker:   {env['KAFKA_BOOTSTRAP_SERVERS']}")
        _say(f"  S3:       {env['S3_ENDPOINT']}  (bucket {env['S3_BUCKET']})")
        _say(f"  data:     {data_dir}  (logs in {data_dir / 'logs'})")
        if settings.node_enabled:
            _say(f"  node:     {settings.node_id or socket.gethostname()}  (log {data_dir / 'logs' / 'node.log'})")
        _say("  first key: loraplane keys create --role admin --name me   (in another shell)")
        _say("Ctrl-C stops everything")
        if settings.embedded_kafka:
            # The stack's own process keeps the broker's partitions short (infra/log_keeper.py).
            from infra.log_keeper import LogKeeper

            served = {"kafka_bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"], "s3_endpoint": env["S3_ENDPOINT"]}
            keeper = asyncio.create_task(LogKeeper(settings.model_copy(update=served), _say).run())
        failed = await stack.run_until_signal()
        if failed is not None:
            _say(f"{failed.name} failed (exit code {failed.code}); stopping the stack")
            return 1
        return 0
    except asyncio.CancelledError:
        _say("interrupted while starting")
        return 130
    finally:
        _say("stopping")
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await stack.stop()
        (data_dir / STACK_ENV).unlink(missing_ok=True)
        _say("stopped")


# --- keys -------------------------------------------------------------------------------------


async def _create_key(settings: Settings, name: str, role: str, team: str, answer_within_s: float) -> int:
    from aiokafka import TopicPartition

    import streams.catalog  # noqa: F401
    from api.auth import issue_key
    from infra.kafka import make_consumer, make_producer, publish, stop_quietly
    from streams.api_keys import CreateApiKey, Role
    from streams.envelope import SYSTEM_ACTOR
    from streams.outcomes import CommandRejected
    from streams.serialization import decode, envelope_for
    from streams.topics import COMMANDS, EVENTS

    issued = issue_key()
    command = envelope_for(
        CreateApiKey(key_id=issued.key_id, name=name, role=Role(role), key_hash=issued.key_hash, team=team),
        aggregate_id=issued.key_id,
        actor=SYSTEM_ACTOR,
    )
    consumer = make_consumer(settings)
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()
    try:
        partitions = [TopicPartition(EVENTS.name, p) for p in sorted(consumer.partitions_for_topic(EVENTS.name) or [])]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, ends[tp])
        await publish(producer, COMMANDS, command)
        deadline = time.monotonic() + answer_within_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    event = decode(record.value)
                    if event.command_id != command.command_id:
                        continue
                    if isinstance(event.payload, CommandRejected):
                        print(f"refused: {event.payload.reason}", file=sys.stderr)
                        return 1
                    print(issued.secret)
                    print(f"# {role} key {issued.key_id!r} ({name}); it is shown only now", file=sys.stderr)
                    return 0
        print(
            f"no answer from the agents in {answer_within_s:.0f}s: is `loraplane up` (or a worker) running?",
            file=sys.stderr,
        )
        return 1
    finally:
        await stop_quietly(producer)
        await stop_quietly(consumer)


# --- replay -----------------------------------------------------------------------------------


async def _replay(settings: Settings, database_url: str) -> int:
    from tqdm import tqdm

    from api.readmodel.replay import replay

    bar = tqdm(unit="ev", desc="replay", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    stats = await replay(settings, database_url, progress)
    bar.close()
    print(
        f"replayed {stats.events} events in {stats.seconds:.2f}s ({stats.events_per_second:,.0f} events/s) "
        f"into {database_url}"
    )
    return 0


# --- events -----------------------------------------------------------------------------------


def _moment(text: str) -> datetime:
    from infra.event_tools import parse_moment

    try:
        return parse_moment(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not Unix seconds or an ISO 8601 time: {text!r}") from None


def _events(settings: Settings, args: argparse.Namespace) -> int:
    import streams.catalog  # noqa: F401 - registers every message type
    from infra import event_tools

    if args.events_command == "schema":
        sys.stdout.write(event_tools.schema_text())
        return 0
    if args.events_command == "verify":
        report = asyncio.run(event_tools.verify(settings, args.topic))
        for problem in report.problems:
            print(problem)
        print(f"{args.topic}: {report.summary()}")
        if not args.snapshot:
            return 0 if report.ok else 1
        from agents import snapshot_check

        try:
            at, differences = snapshot_check.run(settings, args.snapshot)
        except LookupError as exc:
            print(f"snapshot of {args.snapshot}: {exc}")
            return 1
        for difference in differences:
            print(difference)
        verdict = "equals" if not differences else f"differs from ({len(differences)} aggregates)"
        print(f"snapshot of {args.snapshot} at offset {at}: {verdict} a fold of the log up to its positions")
        return 0 if report.ok and not differences else 1
    selection = event_tools.Selection(
        types=tuple(args.type or ()),
        aggregate=args.aggregate,
        since=getattr(args, "since", None),
        until=getattr(args, "until", None),
    )
    if args.events_command == "tail":

        def ready(positions: dict[int, int]) -> None:
            where = " ".join(f"{p}:{o}" for p, o in sorted(positions.items()))
            print(f"following {args.topic} from {where}", file=sys.stderr, flush=True)

        following = event_tools.tail(
            settings, args.topic, selection, sys.stdout, from_start=args.from_start, limit=args.limit, on_ready=ready
        )
        asyncio.run(following)
        return 0
    start, starts = event_tools.parse_offsets(args.from_offset or ())
    stop, stops = event_tools.parse_offsets(args.to_offset or ())
    offsets = event_tools.OffsetRange(start, stop, starts, stops)
    with open(args.output, "w", encoding="utf-8") if args.output else contextlib.nullcontext(sys.stdout) as out:
        result = asyncio.run(event_tools.export(settings, args.topic, selection, offsets, out, args.partition or ()))
    for where in result.skipped:
        print(f"skipped {where}: not a JSON object", file=sys.stderr)
    ends = " ".join(f"--from-offset {p}:{o}" for p, o in sorted(result.ends.items()))
    print(f"exported {result.written} events; to continue from the end: {ends}", file=sys.stderr)
    return 0


def _events_parser(sub: Any) -> None:
    from streams.topics import EVENTS

    events = sub.add_parser("events", help="tools for the event log's consumers: tail, export, verify, schema")
    commands = events.add_subparsers(dest="events_command", required=True)
    tail = commands.add_parser("tail", help="follow the log, one JSON line per event")
    export = commands.add_parser("export", help="events by offset or time range as JSON lines, up to the end now")
    verify = commands.add_parser("verify", help="check the whole log: decoding, aggregate versions, one decision each")
    commands.add_parser("schema", help="print the JSON Schema of every event and command type and version")
    verify.add_argument(
        "--snapshot",
        metavar="WHO",
        help="also check the newest snapshot of WHO (worker, node-<id>) against a fold of the log up to its positions",
    )
    for tool in (tail, export, verify):
        tool.add_argument("--topic", default=EVENTS.name, help=f"the topic to read (default {EVENTS.name})")
    for tool in (tail, export):
        tool.add_argument(
            "--type", action="append", help="only this type (repeatable); ending in '.' a prefix, e.g. adapter."
        )
        tool.add_argument("--aggregate", metavar="TYPE[/ID]", help="only this aggregate type, or this one aggregate")
    tail.add_argument("--from-start", action="store_true", help="print the whole log first (default: from its end)")
    tail.add_argument("--limit", type=int, help="stop after this many events")
    export.add_argument(
        "--from-offset", action="append", metavar="[P:]N", help="first offset, of every partition or of P (repeatable)"
    )
    export.add_argument(
        "--to-offset", action="append", metavar="[P:]N", help="offset to stop before, every partition or P"
    )
    export.add_argument("--partition", type=int, action="append", help="only this partition (repeatable)")
    export.add_argument("--since", type=_moment, help="occurred_at at or after (Unix seconds or ISO 8601)")
    export.add_argument("--until", type=_moment, help="occurred_at before (Unix seconds or ISO 8601)")
    export.add_argument("--output", type=Path, help="write to this file instead of stdout")


# --- entry point ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraplane", description=__doc__)
    parser.add_argument("--data-dir", type=Path, help="data directory (default ./.loraplane, or LORAPLANE_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the embedded stack in the foreground: broker, S3, API, agents")
    sub.add_parser("api", help="run the HTTP API and its read-model projector")
    sub.add_parser("worker", help="run the Faust agents")
    sub.add_parser("node", help="run a node agent: register this machine's devices and run vLLM on them")
    sub.add_parser("gateway", help="run the inference gateway's routes on their own (OpenAI-compatible, /v1/...)")
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="issue a key and print it once")
    create.add_argument("--role", choices=["user", "admin"], default="user")
    create.add_argument("--name", default="cli")
    create.add_argument("--team", default="default", help="the team the key acts for (default: default)")
    create.add_argument("--timeout", type=float, default=60.0)
    replay = sub.add_parser("replay", help="rebuild a read model from offset 0 into a fresh database")
    replay.add_argument("--database-url", required=True, help="e.g. sqlite+aiosqlite:///rebuilt.db")
    _events_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    import logging

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's full URL at INFO: a download's presigned URL carries its signature.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command == "up":
        try:
            return asyncio.run(_up(settings))
        except KeyboardInterrupt:
            return 130
    if args.command == "api":
        from api.app import run_api

        run_api(settings)
        return 0
    if args.command == "worker":
        from agents.app import run_worker

        run_worker(settings)
        return 0
    if args.command == "gateway":
        from api.gateway.app import run_gateway

        run_gateway(settings)
        return 0
    if args.command == "node":
        from agents.node.main import main as run_node

        run_node(settings)
        return 0
    if args.command == "keys":
        return asyncio.run(_create_key(settings, args.name, args.role, args.team, args.timeout))
    if args.command == "replay":
        return asyncio.run(_replay(settings, args.database_url))
    if args.command == "events":
        # The tools print records on stdout and little else: the Kafka client's INFO lines are noise here.
        logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))
        try:
            return _events(settings, args)
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:  # `loraplane events tail | head`: the reader had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so exit's flush finds no closed pipe
            return 0
        except LookupError as exc:
            print(exc, file=sys.stderr)
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
