"""The Faust worker: one agent reads `loraplane.commands` and hands each message to the processor."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import faust

import streams.catalog  # noqa: F401 - registers every message type
from agents import adapter_deployments, deployment_instances
from agents.adapters import ADAPTERS
from agents.api_keys import API_KEYS
from agents.artifacts.jobs import ArtifactJobs
from agents.cluster import CLUSTER
from agents.deployment_instances import DeploymentInstances
from agents.deployments import DEPLOYMENTS
from agents.evaluations.aggregate import EVALUATIONS
from agents.evaluations.runner import EvaluationJobs
from agents.filesets import FILESETS
from agents.lora_files import LORA_DIRS
from agents.node.desired import cluster_of
from agents.node_liveness import NodeLiveness, cluster_partition
from agents.processor import CommandProcessor, Message
from agents.usage import USAGE
from agents.workspaces import WORKSPACES
from infra.faust_transport import FaustApp
from infra.secrets import open_secret_box
from infra.settings import Settings
from infra.telemetry import configure_tracing
from streams.cluster import CLUSTER_ID
from streams.envelope import SYSTEM_ACTOR
from streams.serialization import envelope_for
from streams.topics import COMMANDS

log = logging.getLogger(__name__)

AGGREGATES = (WORKSPACES, API_KEYS, ADAPTERS, LORA_DIRS, FILESETS, DEPLOYMENTS, CLUSTER, USAGE, EVALUATIONS)


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
    secrets = open_secret_box(settings)
    jobs = ArtifactJobs(settings, lambda command: processor.send_command(command), secrets)
    evaluation_jobs = EvaluationJobs(settings, lambda command: processor.send_command(command), secrets)
    instances = DeploymentInstances(lambda command: processor.send_command(command))
    processor = CommandProcessor(
        settings,
        AGGREGATES,
        observers=[jobs, instances, evaluation_jobs],
        follow_ups=[deployment_instances.follow_ups, adapter_deployments.follow_ups],
        snapshots_as="worker",
    )
    liveness = NodeLiveness(settings.node_timeout_s)
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
        # What arrives together is decided together and published in one round (agents.processor); Faust acks
        # the batch once handle_many returns.
        async for events in stream.take_events(settings.worker_batch_max, within=settings.worker_batch_within_s):
            messages = []
            for event in events:
                message = event.message
                headers = list(message.headers or [])
                liveness.heard_message(message.value, headers, datetime.now(UTC))
                source = f"{message.topic}:{message.partition}:{message.offset}"
                messages.append(Message(message.value, headers, source, message.key))
            await processor.handle_many(messages)

    @app.on_before_shutdown.connect
    async def _stop_processor(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await jobs.stop()
        await evaluation_jobs.stop()
        await instances.stop()
        await processor.stop()

    ownership_tasks: set[asyncio.Task[None]] = set()

    @app.on_partitions_assigned.connect
    async def _take_up_owned_work(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        """After every rebalance: the command partitions this worker owns decide who runs which jobs and follow-ups."""
        [assigned] = args
        partitions = frozenset(tp.partition for tp in assigned if tp.topic == COMMANDS.name)
        # In a task of its own: the first call folds the log, which must not hold up the rebalance.
        task = asyncio.get_running_loop().create_task(processor.owned(partitions), name="take up owned work")
        ownership_tasks.add(task)
        task.add_done_callback(ownership_tasks.discard)

    @app.task
    async def _fold_the_log_before_the_first_command() -> None:
        await processor.start()

    @app.timer(max(1.0, settings.node_timeout_s / 4))
    async def _judge_nodes() -> None:
        """The worker that owns the cluster's partition judges node liveness (agents.node_liveness)."""
        try:
            now = datetime.now(UTC)
            owned = {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
            liveness.ownership((COMMANDS.name, cluster_partition(COMMANDS.partitions)) in owned, now)
            nodes = cluster_of(processor.state).placement.nodes
            check = liveness.check([n.node_id for n in nodes.values() if not n.lost], now)
            if check is not None:
                await processor.send_command(envelope_for(check, aggregate_id=CLUSTER_ID, actor=SYSTEM_ACTOR))
        except Exception:
            # A timer that raises stops the worker; the next tick judges again.
            log.exception("judging node liveness failed")

    return app


def run_worker(settings: Settings) -> None:
    configure_tracing(settings, "worker")
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
