"""Seed 002 routes: NeMo adapters and the filesets they are made from."""

from __future__ import annotations

from typing import Any

from api.nemo.adapters import ADAPTER_ROUTES
from api.nemo.filesets import FILESET_ROUTES

ROUTES: list[Any] = [*ADAPTER_ROUTES, *FILESET_ROUTES]
