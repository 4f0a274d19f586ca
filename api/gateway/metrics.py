"""The gateway's Prometheus metrics (`GET /metrics`), on the process's default registry."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "loraplane_gateway_requests", "Requests the gateway answered, by model and HTTP status", ["model", "status"]
)
LATENCY = Histogram(
    "loraplane_gateway_request_seconds",
    "From the request to the end of its answer, by model",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "loraplane_gateway_time_to_first_token_seconds",
    "Streamed requests: from the request to the first event forwarded, by model",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
TOKENS = Counter("loraplane_gateway_tokens", "Tokens the engines reported, by model and kind", ["model", "kind"])
IN_FLIGHT = Gauge("loraplane_gateway_in_flight", "Requests in flight from this gateway, by instance", ["instance"])
ADAPTER_HITS = Counter("loraplane_gateway_adapter_hits", "Adapter requests a running instance held", ["model"])
ADAPTER_MISSES = Counter("loraplane_gateway_adapter_misses", "Adapter requests no running instance held", ["model"])
ON_DEMAND_LOADS = Counter(
    "loraplane_gateway_on_demand_loads", "Adapters the gateway asked to load, by outcome", ["model", "outcome"]
)
EVICTIONS = Counter(
    "loraplane_gateway_evictions", "On-demand adapters the gateway evicted, by deployment", ["deploy_id"]
)
RETRIES = Counter("loraplane_gateway_retries", "Requests sent again to another instance before any answer")


@get("/metrics", tags=["system"], summary="Prometheus metrics of this process", media_type=CONTENT_TYPE_LATEST)
async def metrics() -> Response[Any]:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
