"""Seed 002: NeMo adapters and filesets under a workspace, at `/v2/...` and `/apis/models/v2/...`."""
