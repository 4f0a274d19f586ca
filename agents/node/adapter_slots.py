"""Which of a deployment's instances hold which adapters: a pure function of the instances and the adapters wanted.

An instance holds at most `slots` adapters: vLLM keeps runtime-loaded adapters in its CPU cache of `--max-cpu-loras`
(which defaults to `--max-loras`, the adapters one batch can mix on the GPU). The rules, in order of precedence:

1. Only adapters the deployment serves are held, only by instances it still has, never beyond an instance's slots.
2. Stability: an adapter stays where it is. It leaves an instance only when the instance is gone (not in the input),
   the adapter is no longer wanted, the instance holds more than its slots (the surplus goes, copies held elsewhere
   first), or its copy is a surplus one (the adapter has another running holder) whose slot an unserved adapter needs.
   A failed instance keeps its adapters: the node agent restarts it and loads them again.
3. Coverage: an adapter that no running instance holds gets one, if a slot allows: a free slot on a running instance,
   else a surplus copy's slot on one, else the same on a starting instance (unless one already holds it). Several
   copies arise only this way (a running copy while the first holder restarts); they stay until their slot is needed.
4. Spread: a new copy goes to the least loaded candidate (fewest adapters held, then most free slots), not the first.
5. What fits nowhere is pending with the reason, like a GPU placement's (agents.scheduling.placement).

Deterministic: adapters are placed in name order and every tie is broken by instance id, so the input's order does
not matter and replaying the same events reproduces the same assignment.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from streams.deployments import InstanceStatus

RUNNING, STARTING = InstanceStatus.RUNNING, InstanceStatus.STARTING


@dataclass(frozen=True)
class InstanceSlots:
    instance_id: str
    status: InstanceStatus
    max_loras: int  # --max-loras: adapters one batch can use on the GPU
    max_cpu_loras: int | None = None  # --max-cpu-loras: adapters loaded at once; vLLM's default is max_loras
    adapters: frozenset[str] = frozenset()  # assigned now

    @property
    def slots(self) -> int:
        return max(0, self.max_loras if self.max_cpu_loras is None else self.max_cpu_loras)


@dataclass(frozen=True)
class AdapterAssignment:
    placed: Mapping[str, tuple[str, ...]]  # adapter -> ids of the instances that should hold it, sorted
    pending: Mapping[str, str]  # adapter -> why no instance holds it

    def adapters_on(self, instance_id: str) -> frozenset[str]:
        return frozenset(adapter for adapter, holders in self.placed.items() if instance_id in holders)


def assign_adapters(instances: Iterable[InstanceSlots], adapters: Iterable[str]) -> AdapterAssignment:
    """Where each of `adapters` should live over `instances` (the deployment's, with what each holds now)."""
    by_id: dict[str, InstanceSlots] = {}
    for instance in instances:
        if instance.instance_id in by_id:
            raise ValueError(f"instance {instance.instance_id!r} is given more than once")
        by_id[instance.instance_id] = instance
    ids = sorted(by_id)
    wanted = sorted(set(adapters))
    held = _Holdings({iid: set(by_id[iid].adapters).intersection(wanted) for iid in ids}, by_id)
    for iid in ids:
        held.trim(iid)
    pending: dict[str, str] = {}
    for adapter in wanted:
        holders = held.holders(adapter)
        if any(by_id[h].status is RUNNING for h in holders):
            continue
        target = held.target(adapter, RUNNING)
        if target is None and not any(by_id[h].status is STARTING for h in holders):
            target = held.target(adapter, STARTING)
        if target is not None:
            held.add(target, adapter)
        elif not holders:
            pending[adapter] = pending_reason(by_id.values(), held.count)
    placed = {adapter: tuple(holders) for adapter in wanted if (holders := held.holders(adapter))}
    return AdapterAssignment(placed, pending)


def pending_reason(instances: Iterable[InstanceSlots], held: Mapping[str, int] | None = None) -> str:
    """Why an adapter fits on none of `instances`; `held` counts the adapters each holds (default: its `adapters`)."""
    every = sorted(instances, key=lambda i: i.instance_id)
    count = dict(held) if held is not None else {i.instance_id: len(i.adapters) for i in every}
    if not every:
        return "the deployment has no instances"
    live = [i for i in every if i.status in (RUNNING, STARTING)]
    failed = len(every) - len(live)
    if not live:
        return f"none of the deployment's {_instances(len(every))} is running or starting ({failed} failed)"
    with_slots = [i for i in live if i.slots > 0]
    if not with_slots:
        return f"the deployment's {_instances(len(live))} serve no adapters (started with 0 adapter slots)"
    used = sum(min(count.get(i.instance_id, 0), i.slots) for i in with_slots)
    total = sum(i.slots for i in with_slots)
    sizes = {i.slots for i in with_slots}
    if len(with_slots) == 1:
        reason = f"the one instance holds {used} of {total} adapter slots"
    elif len(sizes) == 1 and used == total:
        reason = f"all {len(with_slots)} instances hold {total // len(with_slots)} of {sizes.pop()} adapter slots"
    else:
        reason = f"all {len(with_slots)} instances are full ({used} of {total} adapter slots held)"
    if failed:
        reason += f"; {failed} failed {'instance takes' if failed == 1 else 'instances take'} no new adapters"
    return reason


class _Holdings:
    """The assignment being built: instance id -> adapters, with the choices made over it."""

    def __init__(self, held: dict[str, set[str]], instances: Mapping[str, InstanceSlots]) -> None:
        self.held = held
        self.instances = instances

    @property
    def count(self) -> dict[str, int]:
        return {iid: len(adapters) for iid, adapters in self.held.items()}

    def holders(self, adapter: str) -> list[str]:
        return [iid for iid in sorted(self.held) if adapter in self.held[iid]]

    def add(self, instance_id: str, adapter: str) -> None:
        self.held[instance_id].add(adapter)

    def trim(self, instance_id: str) -> None:
        """Keep no more adapters than the instance has slots: those held nowhere else first, then by name."""
        adapters, slots = self.held[instance_id], self.instances[instance_id].slots
        if len(adapters) > slots:
            keep = sorted(adapters, key=lambda a: (len(self.holders(a)) > 1, a))[:slots]
            self.held[instance_id] = set(keep)

    def target(self, adapter: str, status: InstanceStatus) -> str | None:
        """An instance of `status` to take `adapter`: the least loaded with a free slot, else one with a surplus copy
        (of an adapter another running instance also holds), whose copy is then dropped."""
        candidates = [
            i for i in self.instances.values() if i.status is status and adapter not in self.held[i.instance_id]
        ]
        free = [i for i in candidates if len(self.held[i.instance_id]) < i.slots]
        if free:
            best = min(free, key=lambda i: (len(self.held[i.instance_id]), -i.slots, i.instance_id))
            return best.instance_id
        surplus = [
            (-self._running_holders(other), i.instance_id, other)
            for i in candidates
            if i.slots > 0
            for other in self.held[i.instance_id]
            if self._running_holders(other, besides=i.instance_id) > 0
        ]
        if not surplus:
            return None
        _, instance_id, dropped = min(surplus)
        self.held[instance_id].discard(dropped)
        return instance_id

    def _running_holders(self, adapter: str, besides: str | None = None) -> int:
        return sum(1 for h in self.holders(adapter) if h != besides and self.instances[h].status is RUNNING)


def _instances(count: int) -> str:
    return f"{count} instance{'' if count == 1 else 's'}"
