"""Every NeMo route is served twice: under `/v2/workspaces/...` and under NeMo's own
`/apis/models/v2/workspaces/...` (DESIGN.md), so a NeMo client works unchanged."""

from __future__ import annotations

PREFIXES = ("/v2/workspaces/{workspace:str}", "/apis/models/v2/workspaces/{workspace:str}")


def paths(suffix: str) -> list[str]:
    return [f"{prefix}{suffix}" for prefix in PREFIXES]
