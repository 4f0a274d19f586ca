"""Registry of message types: `(type, schema_version) -> payload model`.

Old versions stay registered so the log stays readable (and their JSON Schema published); an upcaster
registered with `@upcaster(name, from_version=N)` turns a version-N payload (as JSON data) into version N+1.
`streams.serialization.decode` validates an old payload against its own version's model, then upcasts it step
by step to the newest version, so every reader sees only current payloads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.envelope import MessageKind, Payload


@dataclass(frozen=True)
class MessageType:
    name: str
    version: int
    kind: MessageKind
    aggregate_type: str
    model: type[Payload]


ANY_AGGREGATE = "*"

_TYPES: dict[tuple[str, int], MessageType] = {}
_BY_MODEL: dict[type[Payload], MessageType] = {}

PayloadData = dict[str, Any]
Upcaster = Callable[[PayloadData], PayloadData]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}
_CURRENT: dict[str, int] = {}  # the newest version of each type: decode's fast path


def register(
    name: str, *, version: int, kind: MessageKind, aggregate_type: str
) -> Callable[[type[Payload]], type[Payload]]:
    """`aggregate_type="*"` registers a type that may be about any aggregate (e.g. rejections)."""

    def decorate(model: type[Payload]) -> type[Payload]:
        key = (name, version)
        if key in _TYPES:
            raise ValueError(f"message type {name} v{version} is registered twice")
        entry = MessageType(name, version, kind, aggregate_type, model)
        _TYPES[key] = entry
        _BY_MODEL[model] = entry
        _CURRENT[name] = max(version, _CURRENT.get(name, 0))
        return model

    return decorate


def command(name: str, *, version: int = 1, aggregate_type: str) -> Callable[[type[Payload]], type[Payload]]:
    return register(name, version=version, kind=MessageKind.COMMAND, aggregate_type=aggregate_type)


def event(name: str, *, version: int = 1, aggregate_type: str) -> Callable[[type[Payload]], type[Payload]]:
    return register(name, version=version, kind=MessageKind.EVENT, aggregate_type=aggregate_type)


def lookup(name: str, version: int) -> MessageType | None:
    return _TYPES.get((name, version))


def type_of(payload: Payload | type[Payload]) -> MessageType:
    model = payload if isinstance(payload, type) else type(payload)
    try:
        return _BY_MODEL[model]
    except KeyError:
        raise LookupError(f"{model.__name__} is not a registered message type") from None


def all_types() -> list[MessageType]:
    return sorted(_TYPES.values(), key=lambda t: (t.name, t.version))


def current_version(name: str) -> int | None:
    """The newest registered version of a message type, or None for an unknown type."""
    return _CURRENT.get(name)


def upcaster(name: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register the step that turns a `name` payload of `from_version` into `from_version + 1` (JSON data in,
    JSON data out: the step must not depend on the old model's class, which may be gone one day)."""

    def decorate(step: Upcaster) -> Upcaster:
        key = (name, from_version)
        if key in _UPCASTERS:
            raise ValueError(f"an upcaster for {name} v{from_version} is registered twice")
        _UPCASTERS[key] = step
        return step

    return decorate


def upcast(name: str, version: int, data: PayloadData) -> tuple[int, PayloadData]:
    """`data` (a `name` payload of `version`) brought to the newest version; LookupError names a missing step."""
    newest = current_version(name) or version
    while version < newest:
        step = _UPCASTERS.get((name, version))
        if step is None:
            raise LookupError(f"no upcaster from {name} v{version} to v{version + 1}")
        data = step(data)
        version += 1
    return version, data


def missing_upcasters() -> list[str]:
    """Every old version with no step to the next one (a test keeps this empty)."""
    return [
        f"{t.name} v{t.version}"
        for t in all_types()
        if t.version < (current_version(t.name) or 0) and (t.name, t.version) not in _UPCASTERS
    ]
