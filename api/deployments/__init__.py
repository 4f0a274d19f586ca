"""Seed 003: DeepInfra `POST /deploy/llm` and the routes a user of it needs; `GET /v2/nodes` for admins."""
