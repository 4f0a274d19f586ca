"""Seed 000 (Empower `/api/v1/lora`) and seed 001 (DeepInfra `/v1/lora/create`)."""
