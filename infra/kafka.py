"""Kafka clients (aiokafka) configured from settings, and publishing envelopes."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from infra.settings import Settings
from streams.envelope import Envelope
from streams.serialization import encode, headers_for, key_for
from streams.topics import TopicSpec


def make_producer(settings: Settings) -> AIOKafkaProducer:
    # No idempotent producer: Tansu does not support it, and every handler dedupes anyway.
    return AIOKafkaProducer(
        bootstrap_servers=settings.require_kafka(),
        acks="all",
        enable_idempotence=False,
        linger_ms=0,
        request_timeout_ms=15_000,
    )


def make_consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.require_kafka(),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "request_timeout_ms": 15_000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def publish(producer: AIOKafkaProducer, topic: TopicSpec, envelope: Envelope) -> RecordMetadata:
    """Send one envelope keyed by its aggregate id and wait until the broker has it."""
    return await producer.send_and_wait(
        topic.name, value=encode(envelope), key=key_for(envelope), headers=headers_for(envelope)
    )
