"""Request and response examples for the OpenAPI document, taken from the seeds' own (`../shared/seeds/`).

Where a seed shows only placeholders (`"<string>"`), the values are ones its field descriptions allow, so each
example is a request this API accepts.
"""

from __future__ import annotations

from typing import Any

# (method, path as the document spells it) -> a request body
REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    # seed 000 (Empower), its example less the Hugging Face token
    ("POST", "/api/v1/lora"): {
        "hf_revision": "c1b0db933684edbfe29a06fa47eb19cc48025e93",
        "model_name": "IlyaGusev/saiga_mistral_7b_lora",
        "model_source": "HF_HUB",
        "name": "custom_mistral_7b_lora",
    },
    # seed 001 (DeepInfra)
    ("POST", "/v1/lora/create"): {
        "base_model": "mistralai/Mistral-7B-v0.1",
        "lora_name": "my-civitai-lora",
        "source": {"type": "civitai", "civit_url": "https://civitai.com/models/12345?modelVersionId=67890"},
        "private": True,
        "description": "",
    },
    # seed 002 (NeMo)
    ("POST", "/v2/workspaces/{workspace}/adapters"): {
        "name": "my-adapter",
        "fileset": "team-a/my-adapter-files",
        "finetuning_type": "lora",
        "model": "team-a/llama-3-8b",
        "description": "A LoRA of our support tickets",
    },
    ("POST", "/apis/models/v2/workspaces/{workspace}/adapters"): {
        "name": "my-adapter",
        "fileset": "team-a/my-adapter-files",
        "finetuning_type": "lora",
        "model": "team-a/llama-3-8b",
    },
    # seed 003 (DeepInfra deployments)
    ("POST", "/deploy/llm"): {
        "model_name": "my-org/my-model",
        "gpu": "L4-24GB",
        "num_gpus": 1,
        "max_batch_size": 96,
        "hf": {"repo": "my-org/my-model", "revision": "main"},
        "settings": {"min_instances": 1, "max_instances": 1},
    },
    # seed 004 (LoRA files)
    ("DELETE", "/api/v1/admin/lora"): {"partial_path": "identities/Sh0ot1f1_01.safetensors"},
    ("POST", "/api/v1/admin/lora/restore"): {"partial_path": "identities/Sh0ot1f1_01.safetensors"},
}

# (method, path) -> the success answer's example
RESPONSE_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    # seed 000's answer, with what this API adds to it (status, version, ...)
    ("POST", "/api/v1/lora"): {
        "name": "custom_mistral_7b_lora",
        "unit_price": 0.5,
        "active_deployment": None,
        "status": "ready",
        "version": 1,
        "reason": None,
        "model_name": "IlyaGusev/saiga_mistral_7b_lora",
        "model_source": "HF_HUB",
        "hf_revision": "c1b0db933684edbfe29a06fa47eb19cc48025e93",
        "hf_token": None,
        "base_model_name": "mistralai/Mistral-7B-v0.1",
        "created_at": 1706652711,
    },
    ("POST", "/api/v1/admin/lora/upload"): {
        "file_path": "/data/models/loras/identities/my_lora.safetensors",
        "partial_path": "identities/my_lora.safetensors",
        "filename": "my_lora.safetensors",
        "file_size": 142857,
        "entity_type": "identities",
        "upload_timestamp": "2024-01-01T12:00:00Z",
    },
}
