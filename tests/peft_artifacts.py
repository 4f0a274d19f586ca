"""Real adapters made in the test: a PEFT LoRA saved by `peft` over a tiny random Llama, and an image
LoRA with kohya's key names. Made once per process (they take a few seconds) and returned as bytes."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

TINY_BASE_MODEL = "loraplane-tests/tiny-llama"


@functools.cache
def peft_lora_files(base_model: str = TINY_BASE_MODEL, rank: int = 4, seed: int = 0) -> dict[str, bytes]:
    """`adapter_config.json` and `adapter_model.safetensors` exactly as `save_pretrained` writes them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    lora = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    # What `from_pretrained(base_model)` would have recorded; a model made from a config has no name.
    peft_model.peft_config["default"].base_model_name_or_path = base_model
    # A freshly made LoRA has lora_B == 0; train-like random values make the weights distinct per seed.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp, save_embedding_layers=False)
        out = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    config_json = json.loads(out["adapter_config.json"])
    assert config_json["base_model_name_or_path"] == base_model, config_json
    return out


@functools.cache
def kohya_image_lora(rank: int = 4, seed: int = 0) -> bytes:
    """A small SD-style LoRA with kohya key names (lora_unet_..., lora_down/lora_up/alpha)."""
    import torch
    from safetensors.torch import save

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for block in ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "mid_block_attentions_0_proj_in"):
        prefix = f"lora_unet_{block}"
        tensors[f"{prefix}.lora_down.weight"] = torch.randn(rank, 64, generator=generator, dtype=torch.float32).half()
        tensors[f"{prefix}.lora_up.weight"] = torch.randn(64, rank, generator=generator, dtype=torch.float32).half()
        tensors[f"{prefix}.alpha"] = torch.tensor(float(rank)).half()
    return save(tensors, metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank)})


def peft_repo_files(base_model: str = TINY_BASE_MODEL, seed: int = 0) -> dict[str, bytes]:
    """What a Hub repository of a PEFT adapter holds: the saved files and a model card with a licence."""
    files = dict(peft_lora_files(base_model, seed=seed))
    files["README.md"] = b"---\nlicense: apache-2.0\nlibrary_name: peft\n---\n# a tiny test adapter\n"
    return files
