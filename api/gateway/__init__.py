"""The inference gateway: one OpenAI-compatible endpoint for every deployment and LoRA (README, "Calling your
models")."""
