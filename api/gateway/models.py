"""`GET /v1/models`: what a caller can call, as OpenAI's model objects plus where each runs. Pure.

Every live deployment's `model_name`, and every stored adapter that one of them can serve: served already, or a PEFT
LoRA of a deployment's base model (loaded on demand at its first request). `parent` is the deployment it runs on
(or would), as vLLM lists an adapter's base model; `loaded` says whether a running instance holds it now.
"""

from __future__ import annotations

from typing import Any

from api.gateway.state import RegisteredAdapter, RoutingState, Viewer, sees
from streams.deployments import base_model_key

OWNER = "loraplane"
PEFT_LLM = "peft_llm"  # what validation calls a PEFT LoRA of a language model (agents.validation.lora_format)


def model_cards(state: RoutingState, team: Viewer = None) -> list[dict[str, Any]]:
    """The cards of what `team` may call (None: an admin's view, everything): its deployments and the shared ones,
    and its own adapters (another team's adapter on a shared deployment is not listed)."""
    cards: dict[str, dict[str, Any]] = {}
    live = sorted(state.live_deployments(team), key=lambda d: (d.created, d.deploy_id))
    for deployment in live:
        running = state.running_instances(deployment)
        cards.setdefault(
            deployment.model_name,
            _card(deployment.model_name, deployment.created, None, deployment.base_model, bool(running)),
        )
    for adapter in sorted(state.adapters.values(), key=lambda a: a.adapter_id):
        newest = adapter.newest()
        if adapter.deleted or not adapter.enabled or newest is None or not sees(team, adapter.team):
            continue
        served_on = [d for d in live for s in d.adapters.values() if s.adapter_id == adapter.adapter_id]
        loaded_on = [
            d
            for d in served_on
            for s in d.adapters.values()
            if s.adapter_id == adapter.adapter_id
            for i in state.running_instances(d)
            if i.loaded.get(s.name) == s.sha256
        ]
        of_base = [
            d
            for d in live
            if newest.base_model
            and newest.analysis.format == PEFT_LLM
            and base_model_key(d.base_model) == base_model_key(newest.base_model)
        ]
        candidates = loaded_on or served_on or of_base
        if not candidates:
            continue
        parent = candidates[0]
        cards.setdefault(adapter.public_name, _adapter_card(adapter, parent.model_name, bool(loaded_on)))
    return [cards[k] for k in sorted(cards)]


def _adapter_card(adapter: RegisteredAdapter, parent: str, loaded: bool) -> dict[str, Any]:
    newest = adapter.newest()
    assert newest is not None
    card = _card(adapter.public_name, adapter.created, parent, adapter.adapter_id, loaded)
    card["version"] = newest.version
    return card


def _card(model_id: str, created: int, parent: str | None, root: str, loaded: bool) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": OWNER,
        "root": root,
        "parent": parent,
        "loaded": loaded,
    }
