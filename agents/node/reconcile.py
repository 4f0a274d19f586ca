"""Desired vs actual adapters on one vLLM instance: the unloads and loads that make them agree. Pure: no calls here.

What is loaded now is the node agent's own record first and vLLM's `/v1/models` list second:

- The record (what this agent loaded, with which sha256, into which vLLM process) is trusted. vLLM's list is known to
  miss runtime-loaded adapters, so an adapter missing from it but recorded for the current process counts as loaded.
- Record entries for another vLLM process are stale: runtime-loaded adapters die with the process, so after a restart
  every desired adapter is loaded again, whatever the record still says.
- The list only adds: a name vLLM lists that the agent never loaded (into this process) has unknown content. It is
  unloaded, and loaded again from the agent's copy if it is desired.

The plan unloads first (what is not desired, then what is loaded at an outdated sha256 or with unknown content), then
loads what is missing, in name order, and never holds more adapters than the instance's slots at any step: a load
that would exceed them is deferred with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoadedAdapter:
    """The agent's record of one adapter it loaded: its content and the vLLM process it went into."""

    sha256: str
    process: str  # the agent's id for one start of vLLM (e.g. pid and start time): a restart gives a new one


@dataclass(frozen=True)
class Load:
    name: str
    sha256: str
    why: str


@dataclass(frozen=True)
class Unload:
    name: str
    why: str


Action = Load | Unload


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]  # to run in order
    deferred: Mapping[str, str]  # desired adapter -> why it is not loaded (no free slot)


def reconcile(
    desired: Mapping[str, str],
    *,
    record: Mapping[str, LoadedAdapter],
    listed: Iterable[str],
    process: str,
    slots: int,
) -> Plan:
    """The actions that bring the instance from what is loaded to `desired` (name -> sha256).

    `record` is the agent's record of what it loaded, `listed` the adapter names vLLM lists (`listed_adapters`),
    `process` the id of the vLLM process running now, `slots` the adapters it may hold at once (`--max-cpu-loras`,
    else `--max-loras`).
    """
    known = {name: entry.sha256 for name, entry in record.items() if entry.process == process}
    unknown = set(listed) - set(known)
    loaded = set(known) | unknown
    unloads: list[Unload] = []
    for name in sorted(loaded):
        if name not in desired:
            why = "is not assigned to this instance"
            if name in unknown:
                why += "; vLLM lists it but this agent did not load it"
            unloads.append(Unload(name, why))
        elif name in unknown:
            unloads.append(Unload(name, "vLLM lists it but this agent did not load it: its content is unknown"))
        elif known[name] != desired[name]:
            unloads.append(Unload(name, f"is loaded at sha256 {known[name]} but {desired[name]} is wanted"))
    remaining = loaded - {u.name for u in unloads}
    held = len(remaining)
    loads: list[Load] = []
    deferred: dict[str, str] = {}
    for name in sorted(set(desired) - remaining):
        if held < slots:
            loads.append(Load(name, desired[name], "is assigned to this instance and not loaded"))
            held += 1
        else:
            deferred[name] = f"all {slots} adapter slots of the instance are held"
    return Plan((*unloads, *loads), deferred)


def listed_adapters(models: Any, base_model: str | None = None) -> frozenset[str]:
    """The adapter names in vLLM's `/v1/models` answer: entries whose `parent` is set (to the base model's id).

    Only `base_model`'s adapters when it is given. This list may miss runtime-loaded adapters; see `reconcile`.
    Raises ValueError when the answer is not an OpenAI model list.
    """
    data = models.get("data") if isinstance(models, Mapping) else None
    if not isinstance(data, list):
        raise ValueError("not an OpenAI model list: expected an object with a 'data' list")
    names = set()
    for card in data:
        if not isinstance(card, Mapping) or not isinstance(card.get("id"), str):
            raise ValueError(f"not an OpenAI model card (an object with a string 'id'): {card!r:.200}")
        parent = card.get("parent")
        if parent is not None and (base_model is None or parent == base_model):
            names.add(card["id"])
    return frozenset(names)
