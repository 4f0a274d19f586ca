"""The inference gateway: authenticates a request, finds the engine for its `model`, loads a cold adapter on demand,
forwards the request (streamed or not), meters its tokens.

Decisions are the pure functions of api.gateway.routing over the state api.gateway.follower keeps folded from the
log; this module does the I/O around them: the engines (infra.engine_http), the commands topic, the usage meter.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer

from api.auth import Principal, hash_key, key_id_of
from api.gateway import metrics
from api.gateway.errors import (
    Answer,
    BadRequest,
    DeploymentNotFound,
    EngineFailed,
    EngineTimedOut,
    GatewayError,
    ModelNotFound,
    Unauthorized,
    Unavailable,
)
from api.gateway.follower import RoutingFollower
from api.gateway.models import model_cards
from api.gateway.routing import (
    AdapterTarget,
    BaseTarget,
    LoadPlan,
    NotFound,
    Route,
    Target,
    attached_to,
    on_demand_name,
    pin,
    plan_loads,
    resolve,
    routes_for,
)
from api.gateway.sse import SseUsage, Usage, usage_of_body
from api.gateway.state import RoutingState, StoredVersion, Viewer
from api.gateway.usage import UsageMeter
from infra.engine_http import EngineBroken, EngineHttp, EngineResponse, EngineTimeout, EngineUnreachable
from infra.kafka import make_producer, publish, stop_quietly
from infra.secrets import SecretError, open_secret_box
from infra.settings import Settings
from infra.telemetry import current_traceparent
from streams.deployments import (
    DEPLOYMENT_HEADER,
    INSTANCE_HEADER,
    AdapterAttached,
    AttachAdapter,
    DeployedAdapter,
    engine_key_context,
)
from streams.envelope import Envelope, Payload
from streams.outcomes import CommandRejected, RejectionCode
from streams.serialization import envelope_for
from streams.topics import COMMANDS

log = logging.getLogger(__name__)

RETRY_AFTER_S = 10
LOADING_RETRY_AFTER_S = 5
# What validation calls image LoRAs (agents.validation.lora_format): no engine here serves them.
IMAGE_FORMATS = frozenset({"kohya_image", "diffusers_image"})


@dataclass
class _Call:
    """One request on its way: what it asked for and where it went (for usage, metrics and in-flight counts)."""

    model: str
    principal: Principal
    base_model: str | None
    started: float
    route: Route | None = None


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = RoutingState()
        self.follower = RoutingFollower(settings, self.state)
        self.http = EngineHttp(read_timeout_s=settings.gateway_upstream_timeout_s)
        self.secrets = open_secret_box(settings)
        self.gateway_id = f"{socket.gethostname()}-{os.getpid()}"
        self.meter = UsageMeter(self._send, self.gateway_id, settings.gateway_usage_flush_s)
        self._producer: AIOKafkaProducer | None = None
        self.in_flight: Counter[str] = Counter()  # instance id -> requests
        self.adapter_in_flight: Counter[tuple[str, str]] = Counter()  # (deploy id, served name) -> requests
        self.last_used: dict[tuple[str, str], float] = {}
        self._loads: dict[tuple[str, int, str | None], asyncio.Task[None]] = {}  # (adapter, version, pinned to)
        self._engine_keys: dict[str, str] = {}  # sealed -> opened

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._producer = make_producer(self.settings)
        await self._producer.start()
        self.follower.start()
        self.meter.start()

    async def stop(self) -> None:
        await self.meter.stop()
        await self.follower.stop()
        for task in list(self._loads.values()):
            task.cancel()
        await self.http.close()
        if self._producer is not None:
            await stop_quietly(self._producer)

    @property
    def ready(self) -> bool:
        return self.follower.ready and self.follower.healthy

    async def _send(self, command: Envelope) -> None:
        assert self._producer is not None, "start() first"
        await publish(self._producer, COMMANDS, command)

    # --- who asks -------------------------------------------------------------------------------------------------

    async def authenticate(self, header: str | None) -> Principal:
        if not self.follower.ready:  # keys and models are unknown until the log is read: not a 401 or a 404
            raise Unavailable(
                "the gateway is still reading the event log",
                retry_after_s=LOADING_RETRY_AFTER_S,
                code="gateway_starting",
            )
        scheme, _, key = (header or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("missing bearer API key: send `Authorization: Bearer lp_...`")
        key_id = key_id_of(key)
        record = self.state.keys.get(key_id) if key_id else None
        if record is None and key_id:
            await self.follower.fresh()  # a key made a moment ago
            record = self.state.keys.get(key_id)
        if record is None or record.revoked or not hmac.compare_digest(record.key_hash, hash_key(key)):
            raise Unauthorized("invalid or revoked API key")
        return Principal(key_id=record.key_id, name=record.name, role=record.role, team=record.team)

    # --- what is asked for ----------------------------------------------------------------------------------------

    async def resolve(self, model: str, principal: Principal | None = None) -> Target:
        """What `model` names for the caller: another team's adapter or unshared deployment is not found."""
        team = viewer(principal) if principal is not None else None
        found = resolve(self.state, model, team)
        if isinstance(found, NotFound):
            await self.follower.fresh()  # made a moment ago?
            found = resolve(self.state, model, team)
        if isinstance(found, NotFound):
            raise ModelNotFound(found.reason, param="model")
        return found

    async def pin(self, target: Target, deploy_id: str) -> Target:
        """`target` answered only by deployment `deploy_id` (the request's `X-Loraplane-Deployment`)."""
        pinned = pin(self.state, target, deploy_id)
        if isinstance(pinned, NotFound):
            await self.follower.fresh()  # deployed a moment ago?
            pinned = pin(self.state, target, deploy_id)
        if isinstance(pinned, NotFound):
            raise DeploymentNotFound(pinned.reason, param=DEPLOYMENT_HEADER)
        return pinned

    def models(self, principal: Principal | None = None) -> list[dict[str, Any]]:
        return model_cards(self.state, viewer(principal) if principal is not None else None)

    async def routes(self, target: Target, principal: Principal) -> list[Route]:
        routes = routes_for(self.state, target, self.in_flight)
        if not routes:
            await self.follower.fresh()
            routes = routes_for(self.state, target, self.in_flight)
        if isinstance(target, BaseTarget):
            if not routes:
                raise Unavailable(
                    f"{target.model} has no running instance now (see GET /deploy/{target.deploy_ids[0]})",
                    retry_after_s=RETRY_AFTER_S,
                )
            return routes
        if routes:
            metrics.ADAPTER_HITS.labels(target.model).inc()
            return routes
        metrics.ADAPTER_MISSES.labels(target.model).inc()
        await self._load(target, principal)
        routes = routes_for(self.state, target, self.in_flight)
        if not routes:
            raise Unavailable(f"{target.model} was loaded and unloaded again; try again", retry_after_s=1)
        return routes

    # --- loading on demand ----------------------------------------------------------------------------------------

    async def _load(self, target: AdapterTarget, principal: Principal) -> None:
        """Load the adapter on a deployment of its base model: one load however many requests ask at once."""
        version = target.wanted()
        assert version is not None, "resolve() checks it is stored"
        key = (target.adapter.adapter_id, version.version, target.deploy_id)
        task = self._loads.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load_once(target, version, principal))
            self._loads[key] = task
            task.add_done_callback(lambda done: self._load_done(key, done))
        await asyncio.shield(task)

    def _load_done(self, key: tuple[str, int, str | None], task: asyncio.Task[None]) -> None:
        if self._loads.get(key) is task:
            del self._loads[key]
        if not task.cancelled():
            task.exception()  # retrieved here: the requests waiting on it raise it themselves

    async def _load_once(self, target: AdapterTarget, version: StoredVersion, principal: Principal) -> None:
        deadline = time.monotonic() + self.settings.gateway_load_timeout_s
        served = attached_to(self.state, target)
        name = target.model
        if not served:
            if version.analysis.format in IMAGE_FORMATS:
                raise BadRequest(
                    f"{name} is an image LoRA ({version.analysis.format}): the engines serve LoRAs of language models",
                    param="model",
                    code="adapter_incompatible",
                )
            if not version.base_model:
                raise BadRequest(
                    f"{name} has no base model recorded, so no deployment can be chosen for it: "
                    "serve it on one with POST /deploy/lora",
                    param="model",
                    code="adapter_incompatible",
                )
            served_name = on_demand_name(target.adapter, version.version)
            deploy_id = await self._attach_somewhere(target, version, served_name, principal, deadline)
            served = [(deploy_id, served_name)]
        outcome = await self.follower.wait_for(lambda: self._load_outcome(served), deadline - time.monotonic())
        if outcome is None:
            metrics.ON_DEMAND_LOADS.labels(name, "timeout").inc()
            raise Unavailable(
                f"{name} is still loading after {self.settings.gateway_load_timeout_s:g}s; try again",
                retry_after_s=LOADING_RETRY_AFTER_S,
                code="adapter_loading",
            )
        if isinstance(outcome, str):
            metrics.ON_DEMAND_LOADS.labels(name, "failed").inc()
            raise EngineFailed(f"{name} failed to load: {outcome}", code="adapter_load_failed")
        metrics.ON_DEMAND_LOADS.labels(name, "loaded").inc()

    def _load_outcome(self, served: list[tuple[str, str]]) -> bool | str | None:
        """True once a running instance holds one of `served` (deploy id, served name); the nodes' reasons once every
        deployment failed it (an instance it was given reported a failed load since it was attached, or the
        deployment stopped serving it); None while it is loading."""
        failures = []
        for deploy_id, name in served:
            deployment = self.state.deployments.get(deploy_id)
            if deployment is None or deployment.deleted or name not in deployment.adapters:
                failures.append(f"{deploy_id} no longer serves it")
                continue
            sha256 = deployment.adapters[name].sha256
            instances = self.state.running_instances(deployment)
            if any(i.loaded.get(name) == sha256 for i in instances):
                return True
            reasons = [f"{i.instance_id}: {i.load_failures[name]}" for i in instances if name in i.load_failures]
            if not reasons:
                return None
            failures += reasons
        return "; ".join(failures) if failures else None

    async def _attach_somewhere(
        self, target: AdapterTarget, version: StoredVersion, served_name: str, principal: Principal, deadline: float
    ) -> str:
        """Ask the best deployment(s) of the base model to serve the adapter on demand; the deploy id that took it."""
        choice = plan_loads(
            self.state,
            version,
            self.in_flight,
            self.adapter_in_flight,
            self.last_used,
            served_name=served_name,
            team=target.viewer,
            only=target.deploy_id,
        )
        if choice.deployments_of_base == 0:
            raise Unavailable(
                f"{target.model} exists, but no deployment of its base model {version.base_model} does: "
                "deploy one with POST /deploy/llm",
                code="model_not_deployed",
            )
        if not choice.plans:
            raise Unavailable(
                f"no deployment of {version.base_model} can load {target.model} now: " + "; ".join(choice.skipped),
                retry_after_s=RETRY_AFTER_S,
            )
        refusals: list[CommandRejected] = []
        for plan in choice.plans:
            refusal = await self._attach(plan, target, version, served_name, principal, deadline)
            if refusal is None:
                for eviction in plan.evict:
                    metrics.EVICTIONS.labels(plan.deploy_id).inc()
                    log.info("%s: evicted %s (%s)", plan.deploy_id, eviction.name, eviction.reason)
                log.info("%s: loading %s on demand as %s", plan.deploy_id, target.model, served_name)
                return plan.deploy_id
            refusals.append(refusal)
        reasons = "; ".join(r.reason for r in refusals)
        if all(r.code is RejectionCode.INVALID for r in refusals):
            raise BadRequest(reasons, param="model", code="adapter_incompatible")
        raise Unavailable(reasons, retry_after_s=RETRY_AFTER_S)

    async def _attach(
        self,
        plan: LoadPlan,
        target: AdapterTarget,
        version: StoredVersion,
        served_name: str,
        principal: Principal,
        deadline: float,
    ) -> CommandRejected | None:
        adapter = DeployedAdapter(
            name=served_name,
            adapter_id=target.adapter.adapter_id,
            version=version.version,
            artifact=version.artifact,
            analysis=version.analysis,
        )
        command = envelope_for(
            AttachAdapter(adapter=adapter, on_demand=True, evict=plan.evict),
            aggregate_id=plan.deploy_id,
            actor=principal.actor,
            traceparent=current_traceparent(),
        )
        self.state.watch(command.command_id)
        try:
            await self._send(command)

            def decided() -> Payload | None:
                caused = self.state.watched.get(command.command_id, [])
                return next((p for p in caused if isinstance(p, CommandRejected | AdapterAttached)), None)

            outcome = await self.follower.wait_for(decided, deadline - time.monotonic())
        finally:
            self.state.watched.pop(command.command_id, None)
        if outcome is None:
            raise Unavailable(
                f"{plan.deploy_id} did not answer the load of {target.model} in time; try again",
                retry_after_s=LOADING_RETRY_AFTER_S,
                code="adapter_loading",
            )
        return outcome if isinstance(outcome, CommandRejected) else None

    # --- forwarding -----------------------------------------------------------------------------------------------

    async def forward(self, path: str, raw: bytes, principal: Principal, deployment: str | None = None) -> Answer:
        """Answer one OpenAI request (`path` is /v1/completions, /v1/chat/completions or /v1/embeddings); with
        `deployment` (the `X-Loraplane-Deployment` header), only that deployment answers it."""
        started = time.perf_counter()
        body = _json_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("`model` is required: a deployment's model_name or an adapter's name", param="model")
        try:
            answer = await self._forward(path, body, model, principal, started, deployment)
        except GatewayError as exc:
            metrics.REQUESTS.labels(model, str(exc.status_code)).inc()
            raise
        if answer.stream is None:
            metrics.REQUESTS.labels(model, str(answer.status)).inc()
            metrics.LATENCY.labels(model).observe(time.perf_counter() - started)
        return answer

    async def _forward(
        self,
        path: str,
        body: dict[str, Any],
        model: str,
        principal: Principal,
        started: float,
        deployment: str | None = None,
    ) -> Answer:
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("`stream` is true or false", param="stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise BadRequest("`stream_options` is an object", param="stream_options")
        client_wants_usage = bool(stream and options and options.get("include_usage") is True)
        if stream:
            body["stream_options"] = {**(options or {}), "include_usage": True}
        target = await self.resolve(model, principal)
        if deployment is not None:
            target = await self.pin(target, deployment)
        routes = await self.routes(target, principal)
        call = _Call(model, principal, self._base_model(target), started)
        upstream = await self._send_to_engine(path, body, routes, call)
        assert call.route is not None
        answered_by = {DEPLOYMENT_HEADER: call.route.deploy_id, INSTANCE_HEADER: call.route.instance_id}
        if stream and upstream.status == 200:
            return Answer(
                200,
                upstream.content_type,
                stream=self._relay(upstream, call, strip_usage=not client_wants_usage),
                headers={"Cache-Control": "no-cache", **answered_by},
            )
        try:
            content = await upstream.read()
        except EngineTimeout as exc:
            raise EngineTimedOut(str(exc)) from None
        except EngineBroken as exc:
            raise EngineFailed(str(exc)) from None
        finally:
            self._done(call)
        if upstream.status >= 500:
            text = content[:2000].decode("utf-8", errors="replace")
            raise EngineFailed(f"the engine answered {upstream.status}: {text}")
        if upstream.status == 200:
            self._meter(call, usage_of_body(content))
        return Answer(upstream.status, upstream.content_type, content, headers=answered_by)

    async def _send_to_engine(
        self, path: str, body: dict[str, Any], routes: list[Route], call: _Call
    ) -> EngineResponse:
        """Send to the best route; if no answer began, once more to the next (or the same, when it is the only one)."""
        attempts = routes[:2] if len(routes) > 1 else routes * 2
        traceparent = current_traceparent()
        for attempt, route in enumerate(attempts):
            body["model"] = route.served_name
            call.route = route
            self._begin(route)
            headers = {"Content-Type": "application/json", **self._engine_auth(route)}
            if traceparent:
                headers["traceparent"] = traceparent
            try:
                return await self.http.post(f"{route.endpoint}{path}", msgspec.json.encode(body), headers)
            except EngineUnreachable as exc:
                self._done(call)
                if attempt + 1 < len(attempts):
                    metrics.RETRIES.inc()
                    log.warning("%s: %s; trying %s", route.instance_id, exc, attempts[attempt + 1].instance_id)
                    continue
                raise EngineFailed(f"no engine answered: {exc}") from None
            except EngineTimeout as exc:
                self._done(call)
                raise EngineTimedOut(str(exc)) from None
            except BaseException:
                self._done(call)
                raise
        raise AssertionError("unreachable: routes is never empty")

    def _relay(self, upstream: EngineResponse, call: _Call, *, strip_usage: bool) -> Relay:
        """The engine's events as they come. Closing the relay (after the last event, or when the client went away)
        releases the engine's connection, or closes it when the answer was cut short (vLLM then stops generating),
        and counts the request: whether or not it was ever read."""
        parser = SseUsage(strip_usage=strip_usage)

        async def events() -> AsyncIterator[bytes]:
            first = True
            try:
                async for chunk in upstream.chunks():
                    out = parser.feed(chunk)
                    if out:
                        if first:
                            elapsed = time.perf_counter() - call.started
                            metrics.TIME_TO_FIRST_TOKEN.labels(call.model).observe(elapsed)
                            first = False
                        yield out
                if tail := parser.finish():
                    yield tail
            except (EngineTimeout, EngineBroken) as exc:
                error = {"error": {"message": str(exc), "type": "server_error", "param": None, "code": "engine_error"}}
                yield b"data: " + msgspec.json.encode(error) + b"\n\n"

        def finish(whole: bool) -> None:
            if whole:
                upstream.release()
            else:
                upstream.close()
            self._done(call)
            self._meter(call, parser.usage)
            # A client that stops reading at `data: [DONE]` got the whole answer; one that left before, 499.
            metrics.REQUESTS.labels(call.model, "200" if whole or parser.done else "499").inc()
            metrics.LATENCY.labels(call.model).observe(time.perf_counter() - call.started)

        return Relay(events(), finish)

    # --- bookkeeping ----------------------------------------------------------------------------------------------

    def _engine_auth(self, route: Route) -> dict[str, str]:
        sealed = route.sealed_api_key
        if not sealed:
            return {}
        key = self._engine_keys.get(sealed)
        if key is None:
            try:
                key = self.secrets.open(sealed, context=engine_key_context(route.deploy_id, route.instance_id))
            except SecretError as exc:
                raise EngineFailed(f"the key of {route.instance_id} cannot be opened here: {exc}") from None
            self._engine_keys[sealed] = key
        return {"Authorization": f"Bearer {key}"}

    def _base_model(self, target: Target) -> str | None:
        if isinstance(target, BaseTarget):
            return self.state.deployments[target.deploy_ids[0]].base_model
        wanted = target.wanted()
        return wanted.base_model if wanted else None

    def _begin(self, route: Route) -> None:
        self.in_flight[route.instance_id] += 1
        self.adapter_in_flight[(route.deploy_id, route.served_name)] += 1
        self.last_used[(route.deploy_id, route.served_name)] = time.monotonic()
        metrics.IN_FLIGHT.labels(route.instance_id).inc()

    def _done(self, call: _Call) -> None:
        route, call.route = call.route, None
        if route is None:
            return
        used = (route.deploy_id, route.served_name)
        self.in_flight[route.instance_id] -= 1
        self.adapter_in_flight[used] -= 1
        if self.in_flight[route.instance_id] <= 0:
            del self.in_flight[route.instance_id]
        if self.adapter_in_flight[used] <= 0:
            del self.adapter_in_flight[used]
        self.last_used[used] = time.monotonic()
        metrics.IN_FLIGHT.labels(route.instance_id).dec()

    def _meter(self, call: _Call, usage: Usage | None) -> None:
        usage = usage or Usage()
        self.meter.count(
            call.principal.actor, call.model, call.base_model, usage.prompt_tokens, usage.completion_tokens
        )
        metrics.TOKENS.labels(call.model, "prompt").inc(usage.prompt_tokens)
        metrics.TOKENS.labels(call.model, "completion").inc(usage.completion_tokens)


class Relay:
    """An async iterator of chunks whose `finish(whole)` runs exactly once, at `aclose()`, even when it was never
    iterated (an async generator's own `finally` would not run then)."""

    def __init__(self, chunks: AsyncIterator[bytes], finish: Callable[[bool], None]) -> None:
        self._chunks = chunks
        self._finish: Callable[[bool], None] | None = finish
        self._whole = False

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            self._whole = True
            raise

    async def aclose(self) -> None:
        finish, self._finish = self._finish, None
        if finish is None:
            return
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            finish(self._whole)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body is a JSON object")
    return body


def viewer(principal: Principal) -> Viewer:
    """Whose view of the routing state a caller has: its team's, or everything (None) for an admin key."""
    return None if principal.is_admin else principal.team
