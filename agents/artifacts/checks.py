"""Pure decisions of the artifacts agent: which file holds the weights, which container a file is by
its first bytes (never its name), and what a validation report means for the registry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

from agents.validation import (
    ArtifactReport,
    Container,
    LoraFormat,
    ValidationProblem,
    parse_peft_config,
    validate_safetensors,
    validate_torch_file,
)
from infra.huggingface import HubGatedRepo, HubRevisionNotFound, HubTokenRefused
from streams.adapters import RejectedPart
from streams.artifacts import Analysis

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
SNIFF_BYTES = 16
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80


def choose_weights(paths: Iterable[str]) -> str | None:
    """PEFT's `adapter_model.safetensors` first, then any safetensors, then PEFT's pickled
    `adapter_model.bin`, then any other checkpoint: safetensors is preferred because it cannot run code."""
    names = sorted(paths)

    def first(pred: object) -> str | None:
        return next((n for n in names if pred(n)), None)  # type: ignore[operator]

    return (
        first(lambda n: n.rsplit("/", 1)[-1] == "adapter_model.safetensors")
        or first(lambda n: n.lower().endswith(".safetensors"))
        or first(lambda n: n.rsplit("/", 1)[-1] == "adapter_model.bin")
        or first(lambda n: n.lower().endswith(WEIGHT_SUFFIXES))
    )


def sniff_container(head: bytes) -> Container | None:
    """What the first bytes say the file is: a ZIP (torch.save) or a raw pickle, or a safetensors
    header (8-byte little-endian length, then JSON). None for anything else."""
    if head.startswith(_ZIP_MAGIC) or (head[:1] and head[0] == _PICKLE_PROTOCOL):
        return Container.TORCH
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return Container.SAFETENSORS
    return None


UNKNOWN_CONTAINER = ValidationProblem(
    "unknown_container", "the file is neither safetensors nor a PyTorch checkpoint (read from its content)"
)
NO_LORA = ValidationProblem("not_a_lora", "the file holds no LoRA weights (no lora_A/lora_B, lora_down/lora_up pairs)")


def validate_weights(
    read: BinaryIO, size: int, *, adapter_config: bytes | None = None, expected_base_model: str | None = None
) -> ArtifactReport | ValidationProblem:
    """Validate by content; a problem when the file is not a container this registry reads."""
    read.seek(0)
    head = read.read(SNIFF_BYTES)
    read.seek(0)
    container = sniff_container(head)
    if container is Container.SAFETENSORS:
        return validate_safetensors(read, size, adapter_config=adapter_config, expected_base_model=expected_base_model)
    if container is Container.TORCH:
        return validate_torch_file(read, size, adapter_config=adapter_config, expected_base_model=expected_base_model)
    return UNKNOWN_CONTAINER


def problems_of(report: ArtifactReport | ValidationProblem) -> list[ValidationProblem]:
    """Every reason to refuse: the report's problems, and a file with no LoRA in it."""
    if isinstance(report, ValidationProblem):
        return [report]
    problems = list(report.problems)
    if not problems and report.format is LoraFormat.UNKNOWN:
        problems.append(NO_LORA)
    return problems


def rejection_reason(problems: Iterable[ValidationProblem], where: str | None = None) -> str:
    text = "; ".join(p.message for p in problems)
    return f"{where}: {text}" if where else text


def analysis_of(report: ArtifactReport, adapter_config: bytes | None = None) -> Analysis:
    config = parse_peft_config(adapter_config)[0] if adapter_config is not None else None
    return Analysis(
        container=report.container.value,
        format=report.format.value,
        rank=report.rank,
        ranks=report.ranks,
        target_modules=report.target_modules,
        dtypes=report.dtypes,
        parameter_count=report.parameter_count,
        tensor_count=report.tensor_count,
        peft_type=report.peft_type,
        base_model=report.base_model,
        lora_alpha=config.lora_alpha if config else None,
        modules_to_save=tuple(config.modules_to_save or ()) if config else (),
    )


BASE_MODEL_MISMATCH = "base_model_mismatch"


def part_of_problems(problems: Iterable[ValidationProblem]) -> RejectedPart:
    codes = {p.code for p in problems}
    return RejectedPart.BASE_MODEL if BASE_MODEL_MISMATCH in codes else RejectedPart.CONTENT


def part_of_error(error: Exception) -> RejectedPart:
    """Which part of the request a fetch failure is about (the Hub's answers name it by their type)."""
    if isinstance(error, HubRevisionNotFound):
        return RejectedPart.REVISION
    if isinstance(error, HubTokenRefused | HubGatedRepo):
        return RejectedPart.TOKEN
    return getattr(error, "part", RejectedPart.SOURCE)
