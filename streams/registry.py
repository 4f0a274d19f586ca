"""Registry of message types: `(type, schema_version) -> payload model`.

Old versions stay registered so the log stays readable; `upgrade` on a payload class turns an old
version into the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
