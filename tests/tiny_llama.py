"""A tiny Llama that vLLM can serve, and PEFT LoRA adapters for it, all made here (nothing is downloaded).

The model has random weights (fixed seed) and a byte-level BPE tokenizer trained with `tokenizers` on a short text;
the adapters are PEFT LoRAs saved by `peft` with random, non-zero `lora_B`, large enough that greedy decoding with an
adapter differs from the base model's. Everything is deterministic: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Rank 8 is one of the ranks vLLM's --max-lora-rank accepts.
ADAPTER_RANK = 8
TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_POSITIONS = 512
DONE = ".tiny-llama-complete"

_TEXT = """
The quick brown fox jumps over the lazy dog. A LoRA adapter changes a few low-rank matrices of a base model.
Control planes schedule deployments onto nodes; node agents start vLLM, poll its health and load adapters.
Kafka keeps the log of record, every decision is an event, and a replay of the log gives the same state.
Once upon a time there was a small language model that knew only a handful of words and numbers 0 1 2 3 4 5 6 7 8 9.
"""


# A plain chat template (the tiny tokenizer has none, and vLLM's chat completions need one).
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}\n{% endfor %}"


def make_tiny_llama(dest: Path, *, seed: int = 0, vocab_size: int = 512, chat_template: str | None = None) -> Path:
    """A Llama checkpoint directory (config.json, model.safetensors, tokenizer files) at `dest`; reused if done.
    With `chat_template`, its tokenizer carries that template."""
    if (dest / DONE).exists():
        return dest
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    specials = ["<unk>", "<s>", "</s>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([line for line in _TEXT.splitlines() if line] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=MAX_POSITIONS
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(dest)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention supports 32, 64, 80, ... only
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
        dtype="float32",
    )
    model = LlamaForCausalLM(config)
    # The default init (std 0.02) gives almost flat logits; wider weights make greedy decoding clearly decided.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.2)
    model.save_pretrained(dest, safe_serialization=True)
    (dest / DONE).write_text(json.dumps({"seed": seed, "vocab_size": config.vocab_size}) + "\n")
    return dest


def make_lora_adapter(
    base_dir: Path,
    dest: Path,
    *,
    seed: int,
    rank: int = ADAPTER_RANK,
    target_modules: Sequence[str] = TARGET_MODULES,
    base_model_name: str | None = None,
) -> Path:
    """A PEFT LoRA (adapter_config.json + adapter_model.safetensors) for the model at `base_dir`, at `dest`."""
    if (dest / DONE).exists():
        return dest
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    shutil.rmtree(dest, ignore_errors=True)
    model = LlamaForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules), task_type="CAUSAL_LM"),
    )
    if base_model_name is not None:
        peft_model.peft_config["default"].base_model_name_or_path = base_model_name
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                # peft starts lora_B at zero (the adapter is a no-op); random values as if it had been trained.
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(str(dest), save_embedding_layers=False)
    (dest / DONE).write_text(json.dumps({"seed": seed, "rank": rank}) + "\n")
    return dest


def files_of(directory: Path) -> dict[str, bytes]:
    """The top-level files of a model or adapter directory, as a Hub repository (tests/fake_hub.py) serves them."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and not p.name.startswith(".")}


def cpu_deploy_body(served_name: str, repo: str) -> dict[str, Any]:
    """A `POST /deploy/llm` body that serves the tiny Llama of `repo` on a CPU node: float32 (the CPU build), a short
    context, and two adapter slots of rank 8."""
    return {
        "model_name": served_name,
        "gpu": "cpu",
        "max_batch_size": 4,
        "hf": {"repo": repo},
        "extra_args": ["--dtype", "float32", "--max-model-len", "256", "--seed", "0"],
        "lora": {"max_loras": 2, "max_lora_rank": ADAPTER_RANK},
    }
