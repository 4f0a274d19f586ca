"""Will vLLM serve this adapter on this instance? Checked before `/v1/load_lora_adapter`, with every reason it won't.

What vLLM refuses or ignores (vllm/lora/peft_helper.py, vllm/lora/lora_model.py, vllm/lora/worker_manager.py):
a rank above --max-lora-rank; `modules_to_save`; modules outside the model's LoRA-capable linear layers, where a
packed layer (qkv_proj, gate_up_proj) is named by its parts. vLLM never checks the base model, so that is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from streams.deployments import DeployedAdapter, DeploymentSpec, base_model_key

_DECODER_LINEAR = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
# LoRA-capable modules per architecture family, as adapter target names. vLLM's Llama (which also serves Mistral)
# and Qwen2 pack q/k/v into qkv_proj and gate/up into gate_up_proj (`packed_modules_mapping`), and expect adapters
# to name the parts.
LORA_MODULES: Mapping[str, frozenset[str]] = {
    "llama": _DECODER_LINEAR,
    "mistral": _DECODER_LINEAR,
    "qwen2": _DECODER_LINEAR,
}
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head"})
# Tensor dtypes as the validation reports them (safetensors names), with the torch spellings.
LORA_DTYPES: Mapping[str, str] = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float32": "float32",
}


@dataclass(frozen=True)
class AdapterFacts:
    name: str
    rank: int
    target_modules: tuple[str, ...]
    modules_to_save: tuple[str, ...]
    base_model: str | None
    dtypes: tuple[str, ...]
    has_lm_head_or_embeddings: bool


@dataclass(frozen=True)
class InstanceFacts:
    base_model: str
    # A family ("llama") or a Transformers class ("LlamaForCausalLM"); None before any instance read the weights'
    # config.json; then targets are checked against the modules every known family has.
    architecture: str | None
    max_lora_rank: int
    max_loras: int


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: tuple[str, ...]


def preflight(adapter: AdapterFacts, instance: InstanceFacts) -> Verdict:
    reasons = [
        *_slots(instance),
        *_rank(adapter, instance),
        *_modules(adapter, instance),
        *_saved_modules(adapter),
        *_base_model(adapter, instance),
        *_dtypes(adapter),
    ]
    return Verdict(ok=not reasons, reasons=tuple(reasons))


def architecture_family(architecture: str) -> str:
    return architecture.strip().lower().removesuffix("forcausallm")


def _slots(instance: InstanceFacts) -> list[str]:
    if instance.max_loras < 1:
        return [f"the instance serves no adapters (max_loras {instance.max_loras}); it was started without LoRA"]
    return []


def _rank(adapter: AdapterFacts, instance: InstanceFacts) -> list[str]:
    if adapter.rank < 1:
        return [f"rank {adapter.rank} is not a LoRA rank; it must be at least 1"]
    if adapter.rank > instance.max_lora_rank:
        return [
            f"rank {adapter.rank} is above the instance's max_lora_rank {instance.max_lora_rank}; "
            "vLLM refuses to load it"
        ]
    return []


def _modules(adapter: AdapterFacts, instance: InstanceFacts) -> list[str]:
    supported: frozenset[str] | None
    if instance.architecture is None:
        family, supported = "decoder", frozenset.union(*LORA_MODULES.values())
    else:
        family = architecture_family(instance.architecture)
        supported = LORA_MODULES.get(family)
    if supported is None:
        known = ", ".join(sorted(LORA_MODULES))
        return [f"architecture {instance.architecture!r} has no table of LoRA modules here ({known}); cannot check it"]
    targets = {module.rsplit(".", 1)[-1] for module in adapter.target_modules}
    reasons = []
    embeddings = sorted(targets & EMBEDDING_MODULES)
    if embeddings:
        reasons.append(f"targets {', '.join(embeddings)}: vLLM loads no LoRA on embeddings or the output head")
    unsupported = sorted(targets - supported - EMBEDDING_MODULES)
    if unsupported:
        reasons.append(
            f"targets {', '.join(unsupported)}, which {family} models have no LoRA layer for; "
            f"vLLM refuses such an adapter (it expects only {', '.join(sorted(supported))})"
        )
    if not targets & supported:
        reasons.append(
            f"targets none of {', '.join(sorted(supported))}: the adapter would change nothing and "
            "vLLM would silently serve the base model under the adapter's name"
        )
    return reasons


def _saved_modules(adapter: AdapterFacts) -> list[str]:
    reasons = []
    if adapter.modules_to_save:
        reasons.append(
            f"modules_to_save is {list(adapter.modules_to_save)}; vLLM only loads adapters without modules_to_save"
        )
    if adapter.has_lm_head_or_embeddings:
        reasons.append("carries full lm_head or embed_tokens weights, which vLLM cannot load")
    return reasons


def _base_model(adapter: AdapterFacts, instance: InstanceFacts) -> list[str]:
    if not adapter.base_model:
        return [f"declares no base model, so nothing shows it was trained on {instance.base_model!r}"]
    if base_model_key(adapter.base_model) != base_model_key(instance.base_model):
        return [
            f"was trained on {adapter.base_model!r} but the deployment serves {instance.base_model!r}; "
            "vLLM does not check this and would serve garbage or fail on shapes"
        ]
    return []


def _dtypes(adapter: AdapterFacts) -> list[str]:
    refused = sorted({dtype for dtype in adapter.dtypes if dtype.removeprefix("torch.") not in LORA_DTYPES})
    if refused:
        return [f"has tensors of {', '.join(refused)}; only float16, bfloat16 and float32 LoRA weights are served"]
    return []


def facts_of(adapter: DeployedAdapter) -> AdapterFacts:
    analysis = adapter.analysis
    return AdapterFacts(
        name=adapter.name,
        rank=analysis.rank or max(analysis.ranks, default=0),
        target_modules=analysis.target_modules,
        modules_to_save=analysis.modules_to_save,
        base_model=analysis.base_model,
        dtypes=analysis.dtypes,
        # Full embedding or head weights come with modules_to_save, which is checked on its own.
        has_lm_head_or_embeddings=False,
    )


def deployment_facts(spec: DeploymentSpec, architecture: str | None) -> InstanceFacts:
    """What every instance of a deployment is: they all start from the same spec."""
    return InstanceFacts(
        base_model=spec.base_model_name,
        architecture=architecture,
        max_lora_rank=spec.lora.max_lora_rank,
        max_loras=spec.lora.max_loras,
    )
