"""Which LoRA layout a set of tensor names follows, its rank and target modules, and whether A and B pair up."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from agents.validation.safetensors_header import ValidationProblem

PEFT_PREFIX = "base_model.model."
# (A/down marker, B/up marker); the module path is what precedes the marker.
PEFT_PAIRS = ((".lora_A.", ".lora_B."), (".lora_embedding_A", ".lora_embedding_B"))
PAIRS = (
    *PEFT_PAIRS,
    (".lora_down.", ".lora_up."),  # kohya
    (".lora.down.", ".lora.up."),  # diffusers before PEFT: attn1.to_q.lora.down.weight
    ("_lora.down.", "_lora.up."),  # diffusers attention processors: attn1.processor.to_q_lora.down.weight
    (".lora_linear_layer.down.", ".lora_linear_layer.up."),  # diffusers text encoder patches
)
KOHYA_PREFIX = re.compile(r"^lora_(unet|te\d*|transformer)_")
# The last container index in a kohya module name; what follows is the adapted layer, e.g. attn1_to_q.
KOHYA_CONTAINER = re.compile(r"(?:blocks?|layers|attentions|resnets)_\d+_(?:\d+_)*")
DIFFUSERS_PREFIXES = ("unet.", "transformer.", "text_encoder.", "text_encoder_2.", "text_encoder_3.", "prior.")
DIFFUSERS_BLOCKS = (".down_blocks.", ".up_blocks.", ".mid_block.", "transformer_blocks.")


class LoraFormat(StrEnum):
    PEFT_LLM = "peft_llm"
    KOHYA_IMAGE = "kohya_image"
    DIFFUSERS_IMAGE = "diffusers_image"
    UNKNOWN = "unknown"


class TensorShape(Protocol):
    @property
    def dtype(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class LoraFormatInfo:
    format: LoraFormat
    # The one rank of every A/B pair, or None when there are none or they differ (see module_ranks).
    rank: int | None
    module_ranks: Mapping[str, int]
    target_modules: tuple[str, ...]
    tensor_count: int
    parameter_count: int
    dtypes: tuple[str, ...]
    problems: tuple[ValidationProblem, ...] = field(default=())

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.module_ranks.values())))


@dataclass(frozen=True)
class _Half:
    key: str
    module: str
    partner: str
    is_a: bool


def detect_lora_format(tensors: Mapping[str, TensorShape]) -> LoraFormatInfo:
    halves = [half for key in tensors if (half := _half(key)) is not None]
    module_ranks, problems = _pair(tensors, halves)
    target_modules = sorted({_target(half.module) for half in halves})
    if not tensors:
        problems.append(ValidationProblem("no_tensors", "the file contains no tensors"))
    elif not halves:
        problems.append(ValidationProblem("no_lora_tensors", "no tensor is named like a LoRA A/B or down/up matrix"))
    ranks = Counter(module_ranks.values())
    if len(ranks) > 1:
        found = ", ".join(f"{rank} ({count} modules)" for rank, count in sorted(ranks.items()))
        problems.append(ValidationProblem("mixed_ranks", f"the LoRA rank differs between modules: {found}"))
    return LoraFormatInfo(
        format=_format(halves),
        rank=next(iter(ranks)) if len(ranks) == 1 else None,
        module_ranks=module_ranks,
        target_modules=tuple(target_modules),
        tensor_count=len(tensors),
        parameter_count=sum(math.prod(tensor.shape) for tensor in tensors.values()),
        dtypes=tuple(sorted({tensor.dtype for tensor in tensors.values()})),
        problems=tuple(problems),
    )


def _half(key: str) -> _Half | None:
    for a, b in PAIRS:
        for marker, other, is_a in ((a, b, True), (b, a, False)):
            at = key.rfind(marker)
            if at >= 0 and (marker.endswith(".") or key.endswith(marker) or key[at + len(marker)] == "."):
                partner = key[:at] + other + key[at + len(marker) :]
                module = key[:at].removeprefix(PEFT_PREFIX)
                return _Half(key=key, module=module, partner=partner, is_a=is_a)
    return None


def _pair(tensors: Mapping[str, TensorShape], halves: list[_Half]) -> tuple[dict[str, int], list[ValidationProblem]]:
    module_ranks: dict[str, int] = {}
    unpaired: list[str] = []
    mismatched: list[str] = []
    for half in halves:
        if half.partner not in tensors:
            unpaired.append(half.key)
            continue
        if not half.is_a:
            continue
        a, b = tensors[half.key].shape, tensors[half.partner].shape
        if len(a) < 2 or len(b) < 2 or a[0] == 0 or b[1] != a[0]:
            mismatched.append(f"{half.module} (A {list(a)}, B {list(b)})")
            continue
        module_ranks[half.module] = a[0]
    problems = []
    if unpaired:
        problems.append(
            ValidationProblem(
                "unpaired_lora_tensor", f"{len(unpaired)} LoRA tensors have no A/B partner, e.g. {_examples(unpaired)}"
            )
        )
    if mismatched:
        problems.append(
            ValidationProblem(
                "lora_shape_mismatch",
                f"{len(mismatched)} LoRA pairs are not [rank, in] and [out, rank] matrices: {_examples(mismatched)}",
            )
        )
    return module_ranks, problems


def _examples(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ..."


def _format(halves: list[_Half]) -> LoraFormat:
    if not halves:
        return LoraFormat.UNKNOWN
    if all(KOHYA_PREFIX.match(half.key) for half in halves):
        return LoraFormat.KOHYA_IMAGE
    if any(_is_diffusers(half.key) for half in halves):
        return LoraFormat.DIFFUSERS_IMAGE
    if all(any(a in half.key or b in half.key for a, b in PEFT_PAIRS) for half in halves):
        return LoraFormat.PEFT_LLM
    return LoraFormat.UNKNOWN


def _is_diffusers(key: str) -> bool:
    # The prefixes only count before PEFT's, so base_model.model.transformer.h.0 (GPT-2) stays an LLM.
    return key.startswith(DIFFUSERS_PREFIXES) or any(block in f".{key}" for block in DIFFUSERS_BLOCKS)


def _target(module: str) -> str:
    """The adapted layer's name as PEFT's target_modules spells it: q_proj, to_out.0, attn1_to_q for kohya."""
    if KOHYA_PREFIX.match(module):
        rest = KOHYA_PREFIX.sub("", module)
        containers = list(KOHYA_CONTAINER.finditer(rest))
        return rest[containers[-1].end() :] if containers else rest
    parts = module.split(".")
    if len(parts) > 1 and parts[-1].isdigit():
        return ".".join(parts[-2:])
    return parts[-1]
