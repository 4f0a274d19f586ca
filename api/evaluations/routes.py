"""Evaluations (seed 004's `POST /evaluation/` and `GET /evaluation/health`, under the admin API): an adapter scored
against its base model (or another adapter) on a dataset, run by the evaluation agent through the gateway.

The routes check the request against the registry as the read model shows it (the adapter and baseline exist and are
stored PEFT LoRAs of one base model, a running deployment of it, the dataset's rules of streams.evaluations) and
answer 422 naming the field; then they publish `evaluation.request`, which the aggregate decides.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from minio.error import S3Error

from api.auth import Principal, admin_only
from api.commands import CommandBus
from api.contract import answers
from api.deployments.adapters import serves_base_model
from api.errors import Conflict, NotFound, Unprocessable
from api.evaluations.schemas import (
    AdapterRef,
    DatasetOut,
    DeploymentForEvaluation,
    EvaluationHealth,
    EvaluationIn,
    EvaluationList,
    EvaluationOut,
    JudgeIn,
)
from api.params import Page, PageSize, Wait
from api.readmodel import adapter_queries, deployment_queries, evaluation_queries
from api.schemas import Pagination
from api.uploads import UPLOAD_ROUTE_OPTIONS, stage_upload
from infra.s3_objects import store_blob_from_object
from streams import deployments as deployment_contract
from streams.adapters import DEFAULT_WORKSPACE, adapter_id, public_name
from streams.artifacts import blob_key
from streams.evaluations import (
    CancelEvaluation,
    DatasetItem,
    DatasetProblem,
    EvaluationSpec,
    EvaluationStatus,
    JudgeSpec,
    Metric,
    RequestEvaluation,
    Sampling,
    Target,
    dataset_problems,
    parse_jsonl,
)

Row = dict[str, Any]
BASE = "/api/v1/evaluation"
TAGS = ["admin", "evaluation"]
IMAGE_FORMATS = frozenset({"kohya_image", "diffusers_image"})  # agents.validation.lora_format
PEFT_LLM = "peft_llm"
HEARTBEAT_PREFIX = "evaluations/agents/"  # agents.evaluations.runner writes them
ALIVE_WITHIN_S = 30.0
DECIDED_WITHIN_S = 5.0
MAX_DATASET_BYTES = 32 << 20
ACCEPTED = answers(s202="The run is requested (or still running when `?wait=` ran out): its status so far")


async def _stored(state: State, ref: AdapterRef, loc: list[str | int]) -> tuple[str, str, Row]:
    """(workspace, name, stored version row) of an adapter named as the registry knows it."""
    candidates = [(DEFAULT_WORKSPACE, ref.name)]
    if "/" in ref.name:
        workspace, _, name = ref.name.partition("/")
        candidates.insert(0, (workspace, name))
    for workspace, name in candidates:
        if await adapter_queries.get_adapter(state.engine, workspace, name) is None:
            continue
        row = await adapter_queries.ready_version(state.engine, workspace, name, ref.version)
        if row is None:
            which = f"version {ref.version}" if ref.version else "a stored version"
            raise Unprocessable(f"adapter {ref.name!r} has no {which}", loc=[*loc, "version"])
        analysis = row["analysis"] or {}
        if analysis.get("format") in IMAGE_FORMATS:
            raise Unprocessable(
                f"adapter {ref.name!r} is an image LoRA ({analysis['format']}): no engine here serves image models, "
                "so it cannot be evaluated",
                loc=[*loc, "name"],
            )
        return workspace, name, row
    raise Unprocessable(f"adapter {ref.name!r} does not exist", loc=[*loc, "name"])


def _base_model(row: Row) -> str | None:
    analysis = row["analysis"] or {}
    return analysis.get("base_model") or (row["spec"] or {}).get("base_model")


def _target(workspace: str, name: str, row: Row) -> Target:
    return Target(
        model=f"{public_name(workspace, name)}@v{row['version']}",
        adapter_id=adapter_id(workspace, name),
        version=row["version"],
    )


async def _running_deployments(state: State) -> list[tuple[Row, int]]:
    """Deployments not deleted with at least one running instance, and how many."""
    found = []
    for row, instances in await deployment_queries.list_deployments(state.engine):
        running = sum(1 for i in instances if i["state"] == "running")
        if running:
            found.append((row, running))
    return found


async def _deployment(state: State, deploy_id: str | None, base_model: str) -> Row:
    running = await _running_deployments(state)
    if deploy_id is not None:
        chosen = next((row for row, _ in running if row["deploy_id"] == deploy_id), None)
        if chosen is None:
            raise Unprocessable(
                f"deployment {deploy_id!r} does not exist or runs no instance", loc=["body", "deploy_id"]
            )
        if not serves_base_model(chosen["spec"], base_model):
            raise Unprocessable(
                f"deployment {deploy_id!r} does not serve {base_model}, the adapter's base model",
                loc=["body", "deploy_id"],
            )
        return chosen
    for row, _ in running:
        if serves_base_model(row["spec"], base_model):
            return row
    raise Unprocessable(
        f"no deployment of {base_model}, the adapter's base model, is running: deploy one with POST /deploy/llm",
        loc=["body", "deploy_id"],
    )


_VERSIONED = re.compile(r"^(?P<name>.+)@v(?P<version>[1-9][0-9]{0,8})$")  # as the gateway reads `model`


async def _judge(state: State, judge: JudgeIn, deployment: Row) -> JudgeSpec:
    """The judge as the gateway will be asked for it, and the running deployment it runs on (pinned): a deployment's
    model_name, or an adapter (its newest or named version) of a running deployment's base model."""
    loc: list[str | int] = ["body", "judge"]
    running = [row for row, _ in await _running_deployments(state)]
    named = [row for row in running if row["model_name"] == judge.model]
    if named:
        chosen = _judge_deployment(named, judge, deployment, repr(judge.model))
        return JudgeSpec(
            model=judge.model, deploy_id=chosen["deploy_id"], rubric=judge.rubric, reference=judge.reference
        )
    match = _VERSIONED.match(judge.model)
    ref = AdapterRef(name=match["name"], version=int(match["version"])) if match else AdapterRef(name=judge.model)
    try:
        workspace, name, row = await _stored(state, ref, [*loc, "model"])
    except Unprocessable as refused:
        if "does not exist" not in refused.msg:
            raise Unprocessable(f"judge: {refused.msg}", loc=[*loc, "model"]) from None
        raise Unprocessable(
            f"judge model {judge.model!r} is neither a running deployment's model_name nor a stored adapter",
            loc=[*loc, "model"],
        ) from None
    base_model = _base_model(row)
    if (row["analysis"] or {}).get("format") not in (None, PEFT_LLM) or not base_model:
        raise Unprocessable(f"judge {judge.model!r} is not a PEFT LoRA of a known base model", loc=[*loc, "model"])
    of_base = [row for row in running if serves_base_model(row["spec"], base_model)]
    if judge.deploy_id is None and not of_base:
        raise Unprocessable(
            f"no deployment of {base_model}, the judge's base model, is running: deploy one with POST /deploy/llm",
            loc=[*loc, "model"],
        )
    chosen = _judge_deployment(of_base, judge, deployment, f"{base_model}, the judge's base model")
    target = _target(workspace, name, row)
    return JudgeSpec(model=target.model, deploy_id=chosen["deploy_id"], rubric=judge.rubric, reference=judge.reference)


def _judge_deployment(candidates: list[Row], judge: JudgeIn, run_on: Row, serving: str) -> Row:
    """Of the running deployments that can answer the judge (`serving` says what they serve), the one its `deploy_id`
    names (422 when none), else the run's own deployment when it is one of them, else the first."""
    if judge.deploy_id is not None:
        chosen = next((row for row in candidates if row["deploy_id"] == judge.deploy_id), None)
        if chosen is None:
            raise Unprocessable(
                f"deployment {judge.deploy_id!r} is not a running deployment of {serving}",
                loc=["body", "judge", "deploy_id"],
            )
        return chosen
    return next((row for row in candidates if row["deploy_id"] == run_on["deploy_id"]), candidates[0])


async def _spec(state: State, data: EvaluationIn) -> EvaluationSpec:
    workspace, name, row = await _stored(state, data.adapter, ["body", "adapter"])
    if (row["analysis"] or {}).get("format") not in (None, PEFT_LLM):
        raise Unprocessable(f"adapter {data.adapter.name!r} is not a PEFT LoRA", loc=["body", "adapter", "name"])
    base_model = _base_model(row)
    if not base_model:
        raise Unprocessable(
            f"adapter {data.adapter.name!r} has no base model recorded, so nothing can run it",
            loc=["body", "adapter", "name"],
        )
    deployment = await _deployment(state, data.deploy_id, base_model)
    if isinstance(data.baseline, AdapterRef):
        b_workspace, b_name, b_row = await _stored(state, data.baseline, ["body", "baseline"])
        b_base = _base_model(b_row)
        if not b_base or deployment_contract.base_model_key(b_base) != deployment_contract.base_model_key(base_model):
            raise Unprocessable(
                f"baseline {data.baseline.name!r} is not an adapter of {base_model}", loc=["body", "baseline", "name"]
            )
        baseline = _target(b_workspace, b_name, b_row)
    else:
        baseline = Target(model=deployment["model_name"])
    metrics = tuple(dict.fromkeys(data.metrics))
    judge = None
    if data.judge is not None:
        judge = await _judge(state, data.judge, deployment)
        metrics = tuple(dict.fromkeys((*metrics, Metric.JUDGE)))
    elif Metric.JUDGE in metrics:
        raise Unprocessable(
            "the judge metric needs a `judge`: the model that grades, and its rubric", loc=["body", "judge"]
        )
    if (data.items is None) == (data.dataset_id is None):
        raise Unprocessable("give the dataset as `items` or as `dataset_id`, one of them", loc=["body", "items"])
    if data.items is not None:
        items = tuple(DatasetItem(prompt=i.prompt, reference=i.reference) for i in data.items)
        where, dataset_key = "items", None
    else:
        assert data.dataset_id is not None
        dataset_key = blob_key(data.dataset_id)
        items = tuple(await _uploaded_dataset(state, dataset_key))
        where = "dataset_id"
    sees_reference = judge is None or judge.reference
    if problems := dataset_problems(items, metrics, where=where, judge_sees_reference=sees_reference):
        raise Unprocessable(problems[0].msg, loc=list(problems[0].loc))
    return EvaluationSpec(
        adapter=_target(workspace, name, row),
        baseline=baseline,
        deploy_id=deployment["deploy_id"],
        engine_model=deployment["model_name"],
        base_model=base_model,
        metrics=metrics,
        sampling=Sampling(temperature=data.temperature, max_tokens=data.max_tokens),
        items=items if dataset_key is None else None,
        dataset_key=dataset_key,
        item_count=len(items),
        judge=judge,
    )


async def _uploaded_dataset(state: State, key: str) -> list[DatasetItem]:
    try:
        data = await asyncio.to_thread(_read, state, key)
    except S3Error:
        raise Unprocessable("no dataset was uploaded with this id", loc=["body", "dataset_id"]) from None
    parsed = parse_jsonl(data)
    if isinstance(parsed, DatasetProblem):  # stored only once it parsed: not expected
        raise Unprocessable(parsed.msg, loc=["body", "dataset_id"])
    return parsed


@post(
    f"{BASE}/datasets",
    status_code=201,
    tags=TAGS,
    summary="Upload a JSONL dataset for evaluations",
    guards=[admin_only],
    **UPLOAD_ROUTE_OPTIONS,
)
async def upload_dataset(request: Request[Principal, str, State], state: State) -> DatasetOut:
    """A JSONL file (`file`, multipart), one `{"prompt", "reference"?}` per line, streamed to S3 and checked line by
    line (422 names the line); stored once by content. Its id goes into POST /api/v1/evaluation as `dataset_id`."""
    staged = await stage_upload(request, s3=state.s3, bucket=state.settings.s3_bucket, max_bytes=MAX_DATASET_BYTES)
    try:
        if staged.file is None:
            raise Unprocessable("a file is required", loc=["body", "file"])
        file = staged.file
        parsed = parse_jsonl(await asyncio.to_thread(_read, state, file.key))
        if isinstance(parsed, DatasetProblem):
            raise Unprocessable(parsed.msg, loc=list(parsed.loc))
        await asyncio.to_thread(store_blob_from_object, state.s3, state.settings.s3_bucket, file.key, file.sha256)
    finally:
        await staged.discard_within(state.s3)
    return DatasetOut(
        dataset_id=file.sha256,
        items=len(parsed),
        with_reference=sum(1 for item in parsed if item.reference),
        size=file.size,
    )


def _finished(row: Row | None) -> bool:
    return row is not None and row["status"] != EvaluationStatus.RUNNING.value


def _pending(evaluation_id: str, spec: EvaluationSpec) -> EvaluationOut:
    return EvaluationOut(
        id=evaluation_id,
        status="pending",
        adapter=spec.adapter.model,
        baseline=spec.baseline.model,
        deploy_id=spec.deploy_id,
        base_model=spec.base_model,
        metrics=list(spec.metrics),
        judge=spec.judge,
        items_total=spec.item_count,
        items_done=0,
    )


def _answer(view: EvaluationOut, status_code: int) -> Response[Any]:
    return Response(view.model_dump(mode="json"), status_code=status_code, headers={"Location": f"{BASE}/{view.id}"})


@post(BASE, status_code=200, tags=TAGS, summary="Run evaluation", guards=[admin_only], opt=ACCEPTED)
async def run_evaluation(
    data: JSONBody[EvaluationIn],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> EvaluationOut | Response[Any]:
    """Start a run: 202 with its id and status at once; with `?wait=SECONDS`, 200 with its figures once it ended
    (202 with its progress if the wait runs out first)."""
    spec = await _spec(state, data)
    evaluation_id = uuid.uuid4().hex
    budget = bus.budget(max(wait, DECIDED_WITHIN_S))
    # The aggregate's decision is awaited even without `?wait=`, so its refusal is a 422 and not a 202.
    command_id = await bus.send(
        RequestEvaluation(spec=spec),
        aggregate_id=evaluation_id,
        actor=request.user.actor,
        wait=min(budget.left, DECIDED_WITHIN_S),
    )
    if await bus.outcome(command_id, ["body"]) is not None:  # still pending
        return _answer(_pending(evaluation_id, spec), 202)
    if wait > 0:
        await bus.wait_until(lambda: _row_if(state, evaluation_id, _finished), budget.left)
    row = await evaluation_queries.get_evaluation(state.engine, evaluation_id)
    view = EvaluationOut.from_row(row) if row else _pending(evaluation_id, spec)
    return _answer(view, 200 if _finished(row) else 202)


async def _row_if(state: State, evaluation_id: str, ok: Any) -> Row | None:
    row = await evaluation_queries.get_evaluation(state.engine, evaluation_id)
    return row if ok(row) else None


@get(BASE, tags=TAGS, summary="List evaluation runs", guards=[admin_only])
async def list_evaluations(
    state: State,
    status: FromQuery[EvaluationStatus | None] = None,
    page: Page = 1,
    page_size: PageSize = 100,
) -> EvaluationList:
    rows, total = await evaluation_queries.list_evaluations(
        state.engine, offset=(page - 1) * page_size, limit=page_size, status=status.value if status else None
    )
    return EvaluationList(
        data=[EvaluationOut.from_row(r) for r in rows],
        pagination=Pagination.of(page, page_size, len(rows), total),
    )


@get(f"{BASE}/health", tags=TAGS, summary="Evaluation service health", guards=[admin_only])
async def evaluation_health(state: State) -> EvaluationHealth:
    """Whether an evaluation agent was heard from lately (its heartbeat in S3), the runs not finished, and the
    running deployments an evaluation can run on."""
    beats = await asyncio.to_thread(_heartbeats, state)
    now = time.time()
    alive = [at for at in beats if now - at <= ALIVE_WITHIN_S]
    deployments = [
        DeploymentForEvaluation(
            deploy_id=row["deploy_id"],
            model_name=row["model_name"],
            base_model=deployment_contract.DeploymentSpec.model_validate(row["spec"]).base_model_name,
            running_instances=running,
        )
        for row, running in await _running_deployments(state)
    ]
    return EvaluationHealth(
        status="ok" if alive else "unavailable",
        agents=len(alive),
        last_heartbeat=datetime.fromtimestamp(max(beats), UTC) if beats else None,
        queue_depth=await evaluation_queries.running_count(state.engine),
        deployments=deployments,
    )


def _heartbeats(state: State) -> list[float]:
    found = []
    try:
        for obj in state.s3.list_objects(state.settings.s3_bucket, prefix=HEARTBEAT_PREFIX):
            response = state.s3.get_object(state.settings.s3_bucket, obj.object_name)
            try:
                found.append(float(json.loads(response.read())["at"]))
            finally:
                response.close()
                response.release_conn()
    except Exception:  # S3 away or a damaged heartbeat: no agent is known alive
        return found
    return found


@get(f"{BASE}/{{evaluation_id:str}}", tags=TAGS, summary="An evaluation run", guards=[admin_only])
async def get_evaluation(state: State, evaluation_id: FromPath[str]) -> EvaluationOut:
    row = await evaluation_queries.get_evaluation(state.engine, evaluation_id)
    if row is None:
        raise NotFound(f"evaluation {evaluation_id!r} does not exist", loc=["path", "evaluation_id"])
    return EvaluationOut.from_row(row)


@get(
    f"{BASE}/{{evaluation_id:str}}/results",
    tags=TAGS,
    summary="An evaluation's per-item results (JSONL)",
    guards=[admin_only],
    media_type="application/jsonl",
    opt=answers(s409="The run has no results (yet): it is running, failed or was cancelled"),
)
async def evaluation_results(state: State, evaluation_id: FromPath[str]) -> bytes:
    row = await evaluation_queries.get_evaluation(state.engine, evaluation_id)
    if row is None:
        raise NotFound(f"evaluation {evaluation_id!r} does not exist", loc=["path", "evaluation_id"])
    if not row["results_key"]:
        raise Conflict(
            f"evaluation {evaluation_id!r} is {row['status']}: it has no results", loc=["path", "evaluation_id"]
        )
    return await asyncio.to_thread(_read, state, row["results_key"])


def _read(state: State, key: str) -> bytes:
    response = state.s3.get_object(state.settings.s3_bucket, key)
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


@delete(
    f"{BASE}/{{evaluation_id:str}}",
    status_code=200,
    tags=TAGS,
    summary="Cancel a running evaluation",
    guards=[admin_only],
    opt=ACCEPTED,
)
async def cancel_evaluation(
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    evaluation_id: FromPath[str],
    wait: Wait = 10,
) -> EvaluationOut | Response[Any]:
    row = await evaluation_queries.get_evaluation(state.engine, evaluation_id)
    if row is None:
        raise NotFound(f"evaluation {evaluation_id!r} does not exist", loc=["path", "evaluation_id"])
    command_id = await bus.send(
        CancelEvaluation(reason=f"cancelled by {request.user.name}"),
        aggregate_id=evaluation_id,
        actor=request.user.actor,
        wait=wait,
    )
    pending = await bus.outcome(command_id, ["path", "evaluation_id"])
    row = await evaluation_queries.get_evaluation(state.engine, evaluation_id)
    assert row is not None
    return _answer(EvaluationOut.from_row(row), 202 if pending is not None else 200)


ROUTES: list[Any] = [
    upload_dataset,
    run_evaluation,
    list_evaluations,
    evaluation_health,
    get_evaluation,
    evaluation_results,
    cancel_evaluation,
]
