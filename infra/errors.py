"""One rule for every failure: can a retry help? (after aiokafka's `retriable` flag)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError


class LoraplaneError(Exception):
    retriable = False


class TransientError(LoraplaneError):
    """Something outside us is briefly unavailable; the same call may succeed later."""

    retriable = True


def is_retriable(exc: BaseException) -> bool:
    if isinstance(exc, LoraplaneError | KafkaError):
        return bool(exc.retriable)
    return isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError)
