"""Naming rules that are part of the contract (seed 002)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

# Letters, digits, underscores, hyphens and dots (seed 002); ASCII only, unlike Python's `\w`.
NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
NAME_MAX_LENGTH = 255
_NAME_RE = re.compile(NAME_PATTERN)

EntityName = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)]


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid workspace/adapter name, or None when it is."""
    if not name:
        return "name must not be empty"
    if len(name) > NAME_MAX_LENGTH:
        return f"name is longer than {NAME_MAX_LENGTH} characters"
    if not _NAME_RE.match(name):
        return "name may contain only letters, digits, underscores, hyphens and dots"
    return None
