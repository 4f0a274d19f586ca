"""Importing this module registers every message type, so a decoder knows them all."""

from streams import (
    adapters,
    api_keys,
    cluster,
    deployments,
    evaluations,
    filesets,
    lora_files,
    outcomes,
    usage,
    workspaces,
)

__all__ = [
    "adapters",
    "api_keys",
    "cluster",
    "deployments",
    "evaluations",
    "filesets",
    "lora_files",
    "outcomes",
    "usage",
    "workspaces",
]
