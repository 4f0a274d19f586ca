"""Adapter preflight: every reason vLLM would refuse (or silently ignore) an adapter on an instance."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agents.node.lora_preflight import AdapterFacts, InstanceFacts, Verdict, preflight

BASE = "meta-llama/Llama-3.2-1B"
INSTANCE = InstanceFacts(base_model=BASE, architecture="LlamaForCausalLM", max_lora_rank=16, max_loras=4)
GOOD = AdapterFacts(
    name="sql-helper",
    rank=8,
    target_modules=("q_proj", "v_proj"),
    modules_to_save=(),
    base_model=BASE,
    dtypes=("F32",),
    has_lm_head_or_embeddings=False,
)


def test_a_fitting_adapter_passes() -> None:
    assert preflight(GOOD, INSTANCE) == Verdict(ok=True, reasons=())


@pytest.mark.parametrize(
    "adapter",
    [
        replace(GOOD, rank=16),
        replace(GOOD, base_model="Meta-Llama/LLAMA-3.2-1B"),
        replace(GOOD, base_model="meta-llama/Llama-3.2-1B@5d853ed7d16ac794afa8f5c9c7f59f4e9c950954"),
        replace(GOOD, target_modules=tuple(f"model.layers.0.self_attn.{m}" for m in ("q_proj", "k_proj", "v_proj"))),
        replace(GOOD, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
        replace(GOOD, dtypes=("BF16", "F16", "float32", "torch.bfloat16")),
    ],
)
def test_equivalent_spellings_pass(adapter: AdapterFacts) -> None:
    assert preflight(adapter, INSTANCE).ok


@pytest.mark.parametrize("architecture", ["llama", "mistral", "MistralForCausalLM", "Qwen2ForCausalLM", "qwen2"])
def test_llama_mistral_and_qwen2_families_share_the_module_table(architecture: str) -> None:
    assert preflight(GOOD, replace(INSTANCE, architecture=architecture)).ok


@pytest.mark.parametrize(
    ("adapter", "instance", "expected"),
    [
        (replace(GOOD, rank=32), INSTANCE, "rank 32 is above the instance's max_lora_rank 16; vLLM refuses to load it"),
        (replace(GOOD, rank=0), INSTANCE, "rank 0 is not a LoRA rank"),
        (
            replace(GOOD, target_modules=("q_proj", "c_attn")),
            INSTANCE,
            "targets c_attn, which llama models have no LoRA layer for; vLLM refuses such an adapter",
        ),
        (
            replace(GOOD, target_modules=()),
            INSTANCE,
            "vLLM would silently serve the base model under the adapter's name",
        ),
        (
            replace(GOOD, modules_to_save=("lm_head",)),
            INSTANCE,
            "modules_to_save is ['lm_head']; vLLM only loads adapters without modules_to_save",
        ),
        (
            replace(GOOD, has_lm_head_or_embeddings=True),
            INSTANCE,
            "carries full lm_head or embed_tokens weights, which vLLM cannot load",
        ),
        (
            replace(GOOD, target_modules=("q_proj", "lm_head")),
            INSTANCE,
            "targets lm_head: vLLM loads no LoRA on embeddings or the output head",
        ),
        (
            replace(GOOD, base_model="Qwen/Qwen2.5-7B"),
            INSTANCE,
            "was trained on 'Qwen/Qwen2.5-7B' but the deployment serves 'meta-llama/Llama-3.2-1B'",
        ),
        (replace(GOOD, base_model=None), INSTANCE, "declares no base model"),
        (
            replace(GOOD, dtypes=("F32", "F64")),
            INSTANCE,
            "has tensors of F64; only float16, bfloat16 and float32 LoRA weights are served",
        ),
        (replace(GOOD, dtypes=("F8_E4M3", "I64")), INSTANCE, "has tensors of F8_E4M3, I64"),
        (GOOD, replace(INSTANCE, architecture="GPT2LMHeadModel"), "architecture 'GPT2LMHeadModel' has no table"),
        (GOOD, replace(INSTANCE, max_loras=0), "the instance serves no adapters (max_loras 0)"),
    ],
)
def test_each_reason_alone(adapter: AdapterFacts, instance: InstanceFacts, expected: str) -> None:
    verdict = preflight(adapter, instance)
    assert not verdict.ok
    assert len(verdict.reasons) == 1, verdict.reasons
    assert expected in verdict.reasons[0]


def test_every_reason_is_listed_at_once() -> None:
    adapter = AdapterFacts(
        name="everything-wrong",
        rank=64,
        target_modules=("c_attn", "embed_tokens"),
        modules_to_save=("embed_tokens", "lm_head"),
        base_model="mistralai/Mistral-7B-v0.1",
        dtypes=("F64",),
        has_lm_head_or_embeddings=True,
    )
    verdict = preflight(adapter, replace(INSTANCE, max_loras=0))
    assert not verdict.ok
    expected = [
        "the instance serves no adapters",
        "rank 64 is above the instance's max_lora_rank 16",
        "targets embed_tokens: vLLM loads no LoRA on embeddings",
        "targets c_attn, which llama models have no LoRA layer for",
        "vLLM would silently serve the base model",
        "modules_to_save is ['embed_tokens', 'lm_head']",
        "carries full lm_head or embed_tokens weights",
        "was trained on 'mistralai/Mistral-7B-v0.1' but the deployment serves 'meta-llama/Llama-3.2-1B'",
        "has tensors of F64",
    ]
    assert len(verdict.reasons) == len(expected), verdict.reasons
    for reason, text in zip(verdict.reasons, expected, strict=True):
        assert text in reason
