"""The Faust worker: one agent reads `loraplane.commands` and hands each message to the processor."""

from __future__ import annotations

import logging
from typing import Any

import faust

import streams.catalog  # noqa: F401 - registers every message type
from agents.adapters import ADAPTERS
from agents.api_keys import API_KEYS
from agents.artifacts.jobs import ArtifactJobs
from agents.cluster import CLUSTER
from agents.deployment_instances import DeploymentInstances
from agents.deployments import DEPLOYMENTS
from agents.filesets import FILESETS
from agents.lora_files import LORA_DIRS
from agents.processor import CommandProcessor
from agents.workspaces import WORKSPACES
from infra.faust_transport import FaustApp
from infra.secrets import open_secret_box
from infra.settings import Settings
from infra.telemetry import configure_tracing
from streams.topics import COMMANDS

log = logging.getLogger(__name__)

AGGREGATES = (WORKSPACES, API_KEYS, ADAPTERS, LORA_DIRS, FILESETS, DEPLOYMENTS, CLUSTER)


def create_app(settings: Settings) -> faust.App:
    app = FaustApp(
        settings.worker_group_id,
        broker=f"kafka://{settings.require_kafka()}",
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_s,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        consumer_group_instance_id=settings.worker_instance_id,
        producer_acks=-1,
    )
    jobs = ArtifactJobs(settings, lambda command: processor.send_command(command), open_secret_box(settings))
    instances = DeploymentInstances(lambda command: processor.send_command(command))
    processor = CommandProcessor(settings, AGGREGATES, observers=[jobs, instances])
    commands = app.topic(
        COMMANDS.name,
        key_type=bytes,
        value_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
        partitions=COMMANDS.partitions,
    )

    @app.agent(commands)
    async def handle_commands(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            headers = list(message.headers or [])
            source = f"{message.topic}:{message.partition}:{message.offset}"
            await processor.handle(message.value, headers, source, key=message.key)

    @app.on_before_shutdown.connect
    async def _stop_processor(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await jobs.stop()
        await instances.stop()
        await processor.stop()

    @app.task
    async def _fold_the_log_before_the_first_command() -> None:
        await processor.start()

    return app


def run_worker(settings: Settings) -> None:
    configure_tracing(settings, "worker")
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
