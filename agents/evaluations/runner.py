"""The evaluation agent: runs each requested evaluation's items through the inference gateway, in the worker.

One job per running evaluation, found from the folded log (a worker that restarts, or takes over the partition,
runs it again) or started by `evaluation.requested`. Items run with bounded concurrency; each item's result is
written to S3 (`streams.evaluations.item_key`) before progress counts it, so a re-run scores only the items with no
result yet. Progress is reported by quarter, then the aggregated figures with `evaluation.complete` (or
`evaluation.fail` with the reason); the reports' command ids derive from the `evaluation.requested` event, so a
re-run's repeats are dropped. `evaluation.cancelled` cancels the job: its requests to the gateway are closed.

The agent calls models as any client does, through the gateway (routing, adapters loaded on demand, usage), pinned
to the evaluation's deployment (`X-Loraplane-Deployment`; the judge's requests to the judge's), with an admin key
of its own derived from the master key (`infra.gateway_client.internal_api_key`), which it registers once with
`api_key.create`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from minio import Minio

from agents.background_sends import Send
from agents.evaluations.aggregate import Evaluation
from agents.evaluations.scoring import (
    EngineAnswerError,
    SideScore,
    aggregate,
    judge_prompt,
    judge_request,
    parse_grade,
    progress_step,
    side_record,
    text_scores,
    token_logprob,
)
from agents.partition_jobs import PartitionJobs, commands_partition
from agents.state import AgentState
from infra.gateway_client import GatewayClient, GatewayRefused, InternalKey, internal_api_key
from infra.s3 import make_client
from infra.secrets import SecretBox
from infra.settings import Settings
from streams import evaluations
from streams.api_keys import AGGREGATE as API_KEYS
from streams.api_keys import CreateApiKey, Role
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload, derived_id
from streams.evaluations import (
    GENERATIVE,
    CompleteEvaluation,
    DatasetItem,
    EvaluationSpec,
    FailEvaluation,
    Metric,
    ReportEvaluationProgress,
    Target,
    item_key,
    items_prefix,
    parse_jsonl,
    results_key,
)
from streams.serialization import envelope_for

log = logging.getLogger(__name__)

KEY_PURPOSE = "evaluation-agent"
HEARTBEAT_PREFIX = "evaluations/agents/"
HEARTBEAT_EVERY_S = 5.0


@dataclass(frozen=True)
class Clients:
    """The gateway clients of one run: `run` pinned to the evaluation's deployment, `judge` to the judge's."""

    run: GatewayClient
    judge: GatewayClient


class EvaluationJobs:
    def __init__(self, settings: Settings, send: Send, secrets: SecretBox) -> None:
        self._settings = settings
        self._send = send
        self._key: InternalKey = internal_api_key(secrets, KEY_PURPOSE)
        self._bucket = settings.s3_bucket
        self._client: Minio | None = None
        self._state: AgentState | None = None
        self._jobs = PartitionJobs("evaluation")
        self._background: set[asyncio.Task[None]] = set()
        self.worker = f"{socket.gethostname()}-{os.getpid()}"

    @property
    def client(self) -> Minio:
        if self._client is None:
            self._client = make_client(self._settings)
        return self._client

    # --- Observer -------------------------------------------------------------------------------------------------

    def started(self, state: AgentState) -> None:
        self._state = state
        self._in_background(self._register_key())
        self._in_background(self._heartbeat())

    def owned(self, partitions: frozenset[int]) -> None:
        self._jobs.keep_only(partitions)
        if self._state is None:
            return
        for (aggregate_type, evaluation_id), entry in list(self._state.entries.items()):
            value = entry.value
            if aggregate_type != evaluations.AGGREGATE or not isinstance(value, Evaluation) or not value.running:
                continue
            if commands_partition(evaluation_id) in partitions:
                self._start(evaluation_id, value.spec, value.requested_by, None)

    def decided(self, event: Envelope, command: Envelope) -> None:
        payload = event.payload
        if isinstance(payload, evaluations.EvaluationRequested):
            self._start(event.aggregate_id, payload.spec, event.id, event.correlation_id)
        elif isinstance(
            payload, evaluations.EvaluationCancelled | evaluations.EvaluationCompleted | evaluations.EvaluationFailed
        ):
            if self._jobs.cancel(event.aggregate_id):
                log.info("evaluation %s %s: its job stops", event.aggregate_id, event.type)

    async def stop(self) -> None:
        await self._jobs.stop(*self._background)

    # --- jobs -----------------------------------------------------------------------------------------------------

    def _in_background(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _start(self, evaluation_id: str, spec: EvaluationSpec, cause: str, correlation: str | None) -> None:
        self._jobs.spawn(evaluation_id, evaluation_id, lambda: self._run(evaluation_id, spec, cause, correlation))

    async def _run(self, evaluation_id: str, spec: EvaluationSpec, cause: str, correlation: str | None) -> None:
        async def report(payload: Payload, step: str) -> None:
            command = envelope_for(
                payload,
                aggregate_id=evaluation_id,
                actor=SYSTEM_ACTOR,
                command_id=derived_id(cause, step),
                correlation_id=correlation,
            )
            await self._send(command)

        # Pinned: every request (the adapter loaded on demand among them) runs on the evaluation's deployment, and
        # the judge's on the judge's.
        url = self._settings.evaluation_gateway
        gateway = GatewayClient(url, self._key.key, deployment=spec.deploy_id)
        judge = gateway
        if spec.judge is not None and spec.judge.deploy_id != spec.deploy_id:
            judge = GatewayClient(url, self._key.key, deployment=spec.judge.deploy_id)
        try:
            outcome = await self._items(evaluation_id, spec, Clients(gateway, judge), report)
        except (GatewayRefused, EngineAnswerError) as exc:
            await report(FailEvaluation(reason=str(exc)[:4000]), "fail")
            return
        finally:
            await gateway.close()
            if judge is not gateway:
                await judge.close()
        await report(outcome, "complete")

    async def _items(
        self,
        evaluation_id: str,
        spec: EvaluationSpec,
        gateway: Clients,
        report: Callable[[Payload, str], Awaitable[None]],
    ) -> CompleteEvaluation:
        items = await self._dataset(spec)
        done = await asyncio.to_thread(self._scored, evaluation_id)
        total = len(items)
        count = len(done)
        last_step = progress_step(count, total)
        slots = asyncio.Semaphore(self._settings.evaluation_concurrency)
        lock = asyncio.Lock()
        log.info("evaluation %s: %d of %d items scored already", evaluation_id, count, total)

        async def one(index: int, item: DatasetItem) -> None:
            nonlocal count, last_step
            async with slots:
                record = await self._score(index, item, spec, gateway)
                await asyncio.to_thread(self._put_json, item_key(evaluation_id, index), record)
            async with lock:
                count += 1
                step = progress_step(count, total)
                if step > last_step and count < total:
                    last_step = step
                    await report(ReportEvaluationProgress(items_done=count, items_total=total), f"progress:{step}")

        await asyncio.gather(*(one(i, item) for i, item in enumerate(items) if i not in done))
        rows = await asyncio.to_thread(self._read_rows, evaluation_id, total)
        key = results_key(evaluation_id)
        body = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
        await asyncio.to_thread(self._put, key, body, "application/jsonl")
        return CompleteEvaluation(results=tuple(aggregate(spec.metrics, rows)), results_key=key, items=len(rows))

    async def _score(self, index: int, item: DatasetItem, spec: EvaluationSpec, gateway: Clients) -> dict[str, Any]:
        token_ids: list[int] | None = None
        start = 0
        if Metric.PERPLEXITY in spec.metrics:
            assert item.reference is not None, "the aggregate refuses items without one"
            prompt_ids = await gateway.run.tokens(spec.engine_model, item.prompt, special=True)
            reference_ids = await gateway.run.tokens(spec.engine_model, item.reference, special=False)
            if not reference_ids:
                raise EngineAnswerError(f"item {index}: the reference is no tokens")
            token_ids, start = prompt_ids + reference_ids, len(prompt_ids)
        record: dict[str, Any] = {"index": index, "prompt": item.prompt, "reference": item.reference}
        adapter, baseline = await asyncio.gather(
            self._side(spec.adapter, item, spec, gateway, token_ids, start),
            self._side(spec.baseline, item, spec, gateway, token_ids, start),
        )
        record["adapter"] = side_record(adapter)
        record["baseline"] = side_record(baseline)
        record["deploy_id"] = spec.deploy_id  # every answer said so (GatewayClient checks it)
        record["worker"] = self.worker
        record["scored_at"] = datetime.now(UTC).isoformat()
        return record

    async def _side(
        self,
        target: Target,
        item: DatasetItem,
        spec: EvaluationSpec,
        gateway: Clients,
        token_ids: list[int] | None,
        start: int,
    ) -> SideScore:
        logprobs = None
        if token_ids is not None:
            ids = token_ids

            async def at(position: int) -> float:
                answer = await gateway.run.next_token_logprobs(target.model, ids[:position], ids[position])
                return token_logprob(answer, ids[position], position)

            logprobs = list(await asyncio.gather(*(at(p) for p in range(start, len(ids)))))
        text = None
        judged = None
        scores: dict[str, float] = {}
        if any(m in GENERATIVE for m in spec.metrics):
            text = await gateway.run.generate(
                target.model, item.prompt, max_tokens=spec.sampling.max_tokens, temperature=spec.sampling.temperature
            )
            scores = text_scores(spec.metrics, text, item.reference or "")
        if Metric.JUDGE in spec.metrics:
            assert spec.judge is not None and text is not None, "the aggregate refuses a judge metric without a judge"
            reference = item.reference if spec.judge.reference else None
            prompt = judge_prompt(spec.judge.rubric, item.prompt, text, reference)
            judged = (await gateway.judge.complete(judge_request(spec.judge.model, prompt))).text
            scores[Metric.JUDGE.value] = parse_grade(judged)
        return SideScore(scores=scores, reference_logprobs=logprobs, text=text, judge_output=judged)

    async def _dataset(self, spec: EvaluationSpec) -> list[DatasetItem]:
        if spec.items is not None:
            return list(spec.items)
        assert spec.dataset_key is not None
        data = await asyncio.to_thread(self._get, spec.dataset_key)
        parsed = parse_jsonl(data)
        if not isinstance(parsed, list):
            raise EngineAnswerError(f"the dataset is refused: {parsed.msg}")
        return parsed

    # --- S3 -------------------------------------------------------------------------------------------------------

    def _scored(self, evaluation_id: str) -> set[int]:
        found = set()
        for obj in self.client.list_objects(self._bucket, prefix=items_prefix(evaluation_id)):
            name = (obj.object_name or "").rsplit("/", 1)[-1]
            if name.endswith(".json") and name[:-5].isdigit():
                found.add(int(name[:-5]))
        return found

    def _read_rows(self, evaluation_id: str, total: int) -> list[dict[str, Any]]:
        return [json.loads(self._get(item_key(evaluation_id, index))) for index in range(total)]

    def _get(self, key: str) -> bytes:
        response = self.client.get_object(self._bucket, key)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        self.client.put_object(self._bucket, key, io.BytesIO(body), len(body), content_type=content_type)

    def _put_json(self, key: str, value: dict[str, Any]) -> None:
        self._put(key, json.dumps(value, sort_keys=True).encode(), "application/json")

    # --- the agent's key and heartbeat ----------------------------------------------------------------------------

    async def _register_key(self) -> None:
        """Register the agent's own key once (a repeat is refused as taken, which changes nothing)."""
        state = self._state
        if state is not None and state.get(API_KEYS, self._key.key_id).value is not None:
            return
        command = envelope_for(
            CreateApiKey(key_id=self._key.key_id, name=KEY_PURPOSE, role=Role.ADMIN, key_hash=self._key.key_hash),
            aggregate_id=self._key.key_id,
            actor=SYSTEM_ACTOR,
            command_id=derived_id(self._key.key_id, "create"),
        )
        delay = 0.5
        while True:
            try:
                await self._send(command)
                return
            except Exception as exc:
                log.warning("registering the evaluation agent's key: %s; trying again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _heartbeat(self) -> None:
        """`evaluations/agents/<worker>.json` every few seconds: what `GET /api/v1/evaluation/health` reads."""
        key = f"{HEARTBEAT_PREFIX}{self.worker}.json"
        while True:
            beat = {"worker": self.worker, "at": time.time(), "running": self._jobs.keys()}
            try:
                await asyncio.to_thread(self._put_json, key, beat)
            except Exception as exc:
                log.warning("evaluation heartbeat not written: %s", exc)
            await asyncio.sleep(HEARTBEAT_EVERY_S)
