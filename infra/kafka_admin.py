"""Topic creation and liveness probes for the Kafka-protocol broker (Apache Kafka or Tansu)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from streams.topics import TopicSpec

log = logging.getLogger(__name__)

_NO_ERROR = 0
_TOPIC_ALREADY_EXISTS = 36
_INVALID_CONFIG = 40
_POLICY_VIOLATION = 44
_PROBE_TIMEOUT_S = 2.0


def _admin(bootstrap: str, request_timeout_ms: int) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="loraplane-admin",
        request_timeout_ms=request_timeout_ms,
        retry_backoff_ms=50,
    )


def _topic_error(response: Any, topic: str) -> tuple[int, str]:
    for entry in response.topic_errors:
        if entry[0] == topic:
            return int(entry[1]), (str(entry[2] or "") if len(entry) > 2 else "")
    return _NO_ERROR, ""


async def _create_one(admin: AIOKafkaAdminClient, spec: TopicSpec) -> None:
    configs = dict(spec.configs)
    while True:
        topic = NewTopic(spec.name, spec.partitions, spec.replication_factor, topic_configs=configs)
        code, message = _topic_error(await admin.create_topics([topic]), spec.name)
        if code in (_NO_ERROR, _TOPIC_ALREADY_EXISTS):
            return
        named = [key for key in configs if key in message]
        if configs and (code in (_INVALID_CONFIG, _POLICY_VIOLATION) or named):
            refused = named or list(configs)
            log.warning(
                "broker refused config %s for topic %s (%s); creating it without",
                ", ".join(refused),
                spec.name,
                message or f"error {code}",
            )
            for key in refused:
                configs.pop(key)
            continue
        raise for_code(code)(f"cannot create topic {spec.name}: {message or code}")


async def _wait_for_partitions(admin: AIOKafkaAdminClient, specs: list[TopicSpec], within: float) -> None:
    """Kafka creates topics asynchronously: wait until metadata shows every partition with a leader."""
    deadline = time.monotonic() + within
    while True:
        described = await admin.describe_topics([spec.name for spec in specs])
        ready = {
            t["topic"]
            for t in described
            if t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])
        }
        if all(spec.name in ready for spec in specs):
            return
        if time.monotonic() >= deadline:
            missing = sorted(spec.name for spec in specs if spec.name not in ready)
            raise TimeoutError(f"topics not ready within {within:g}s: {', '.join(missing)}")
        await asyncio.sleep(0.1)


async def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec]) -> None:
    """Create the missing topics with their partitions, replication and configs.

    A topic created meanwhile by someone else is fine. Configs the broker refuses are dropped
    (with a warning) and the topic created without them: Tansu does not know every Kafka config.
    Existing topics are left as they are.
    """
    wanted = list(specs)
    admin = _admin(bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in wanted if spec.name not in existing]
        for spec in missing:
            await _create_one(admin, spec)
        if missing:
            await _wait_for_partitions(admin, missing, within=15.0)
    finally:
        await admin.close()


async def tcp_reachable(bootstrap: str, limit: float) -> bool:
    """Does any bootstrap address accept a TCP connection? (aiokafka logs an error per refusal.)"""
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), limit)
        except (OSError, ValueError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


async def _probe(bootstrap: str, limit: float) -> None:
    if not await tcp_reachable(bootstrap, limit):
        raise ConnectionError(f"nothing accepts connections at {bootstrap}")
    admin = _admin(bootstrap, request_timeout_ms=int(limit * 1000))
    try:
        await asyncio.wait_for(admin.start(), limit)
        await asyncio.wait_for(admin.list_topics(), limit)
    finally:
        await admin.close()


async def wait_for_kafka(bootstrap: str, timeout: float) -> None:  # noqa: ASYNC109
    """Poll the broker until it answers a metadata request; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            await _probe(bootstrap, max(0.5, min(_PROBE_TIMEOUT_S, remaining)))
            return
        except Exception as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Kafka at {bootstrap} did not answer within {timeout:g}s: {last!r}")
        await asyncio.sleep(0.1)


async def kafka_ready(bootstrap: str) -> bool:
    """Does the broker answer a metadata request? Answers within about 2 seconds."""
    try:
        await asyncio.wait_for(_probe(bootstrap, 1.5), _PROBE_TIMEOUT_S)
    except Exception:
        return False
    return True
