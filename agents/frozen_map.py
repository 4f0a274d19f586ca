"""`FrozenMap[K, V]`: a persistent (immutable) map for aggregate state that grows with the log.

A frozen dataclass holding a `dict` must copy it on every change (`{**state.files, path: f}`), so folding n events
into one aggregate costs O(n²). `immutables.Map` is a hash array mapped trie: `set` and `delete` return a new map
in O(log₃₂ n) and share the rest, and the old map stays as it was. Iteration order is not insertion order: state
that needs an order keeps it explicitly. Pydantic sees it as a `dict[K, V]` (snapshots serialize it so).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar, get_args

from immutables import Map
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

K = TypeVar("K")
V = TypeVar("V")


class _AsDict:
    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        key, value = get_args(source) or (Any, Any)
        as_dict = handler.generate_schema(dict[key, value])  # type: ignore[valid-type]
        return core_schema.no_info_after_validator_function(
            Map,
            as_dict,
            serialization=core_schema.wrap_serializer_function_ser_schema(
                lambda m, serialize: serialize(dict(m)), schema=as_dict
            ),
        )


FrozenMap = Annotated[Map[K, V], _AsDict()]
