"""Importing this module registers every message type, so a decoder knows them all."""

from streams import api_keys, outcomes, workspaces

__all__ = ["api_keys", "outcomes", "workspaces"]
