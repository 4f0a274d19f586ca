"""Passing an engine's server-sent events through, event by event, while reading the usage they report.

The gateway asks the engine for the final usage chunk (`stream_options.include_usage`) on every streamed request,
to meter it; a client that did not ask for it does not get it (`strip_usage`). Events are forwarded as soon as they
are complete: nothing waits for the whole answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

_SEPARATORS = (b"\n\n", b"\r\n\r\n")


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


def usage_of(document: object) -> Usage | None:
    """The `usage` of an OpenAI answer (a decoded JSON object), or None when it has none."""
    if not isinstance(document, dict):
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return Usage(prompt if isinstance(prompt, int) else 0, completion if isinstance(completion, int) else 0)


def usage_of_body(body: bytes) -> Usage | None:
    try:
        return usage_of(msgspec.json.decode(body))
    except msgspec.DecodeError:
        return None


class SseUsage:
    def __init__(self, *, strip_usage: bool) -> None:
        self._strip = strip_usage
        self._pending = b""
        self.usage: Usage | None = None
        self.done = False  # `data: [DONE]` went through: the client has the whole answer

    def feed(self, chunk: bytes) -> bytes:
        """The complete events in what arrived so far, to forward now; a partial event waits for its end."""
        data = self._pending + chunk
        end = max(data.rfind(sep) + len(sep) if data.rfind(sep) >= 0 else 0 for sep in _SEPARATORS)
        self._pending = data[end:]
        complete = data[:end]
        if not complete or (b'"usage"' not in complete and b"[DONE]" not in complete):
            return complete
        return b"".join(self._event(event) for event in _split(complete))

    def finish(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        rest, self._pending = self._pending, b""
        return self._event(rest) if rest else b""

    def _event(self, event: bytes) -> bytes:
        if event.startswith(b"data: [DONE]"):
            self.done = True
        if b'"usage"' not in event:
            return event
        body = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        try:
            document = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return event
        usage = usage_of(document)
        if usage is None:
            return event
        self.usage = usage
        if self._strip and isinstance(document, dict) and document.get("choices") == []:
            return b""  # the usage-only chunk the client did not ask for
        return event


def _split(data: bytes) -> list[bytes]:
    """Events with their separators kept, so what is forwarded is byte for byte what arrived."""
    out: list[bytes] = []
    start = 0
    while start < len(data):
        ends = [(i, sep) for sep in _SEPARATORS if (i := data.find(sep, start)) >= 0]
        if not ends:
            out.append(data[start:])
            break
        index, sep = min(ends)
        out.append(data[start : index + len(sep)])
        start = index + len(sep)
    return out
