"""Content validation of uploaded LoRA artifacts: pure functions over a file-like object, no other I/O.

Nothing here trusts a file extension or raises on bad input; every refusal is a `ValidationProblem`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import BinaryIO

from agents.validation.lora_format import LoraFormat, LoraFormatInfo, detect_lora_format
from agents.validation.peft_config import PeftConfig, check_against_tensors, parse_peft_config
from agents.validation.pickle_scan import DEFAULT_MAX_PICKLE_BYTES, PickleScan, scan_pickle, scan_torch_file
from agents.validation.safetensors_header import SafetensorsInfo, ValidationProblem, parse_safetensors

__all__ = [
    "ArtifactReport",
    "Container",
    "LoraFormat",
    "LoraFormatInfo",
    "PeftConfig",
    "PickleScan",
    "SafetensorsInfo",
    "ValidationProblem",
    "check_against_tensors",
    "detect_lora_format",
    "parse_peft_config",
    "parse_safetensors",
    "scan_pickle",
    "scan_torch_file",
    "validate_safetensors",
    "validate_torch_file",
]


EMPTY_FILE = ValidationProblem("empty", "the file is empty")


class Container(StrEnum):
    SAFETENSORS = "safetensors"
    TORCH = "torch"


@dataclass(frozen=True)
class ArtifactReport:
    container: Container
    format: LoraFormat
    rank: int | None
    # Every distinct rank; more than one only when rank_pattern (or a kohya dynamic-rank file) sets them.
    ranks: tuple[int, ...]
    target_modules: tuple[str, ...]
    dtypes: tuple[str, ...]
    parameter_count: int
    tensor_count: int
    problems: tuple[ValidationProblem, ...]
    # From adapter_config.json, when one was given.
    peft_type: str | None = None
    base_model: str | None = None
    # The safetensors `__metadata__`.
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Every global a pickle names, allowed or not.
    pickle_globals: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_safetensors(
    read: BinaryIO, size: int, *, adapter_config: bytes | None = None, expected_base_model: str | None = None
) -> ArtifactReport:
    """Check a safetensors file of `size` bytes (only its header is read) and, if given, its adapter_config.json."""
    parsed = parse_safetensors(read, size)
    if isinstance(parsed, list):
        return _report(Container.SAFETENSORS, None, adapter_config, expected_base_model, parsed)
    lora = detect_lora_format(parsed.tensors)
    return _report(Container.SAFETENSORS, lora, adapter_config, expected_base_model, [], metadata=parsed.metadata)


def validate_torch_file(
    read: BinaryIO, size: int, *, adapter_config: bytes | None = None, expected_base_model: str | None = None
) -> ArtifactReport:
    """Check a pickle-based checkpoint without unpickling it; `read` must be seekable for a ZIP checkpoint."""
    if size <= 0:
        return _report(Container.TORCH, None, adapter_config, expected_base_model, [EMPTY_FILE])
    scan = scan_torch_file(read, max_pickle_bytes=min(size, DEFAULT_MAX_PICKLE_BYTES))
    lora = detect_lora_format(scan.tensors) if scan.ok else None
    problems = list(scan.problems)
    return _report(Container.TORCH, lora, adapter_config, expected_base_model, problems, pickle_globals=scan.globals)


def _report(
    container: Container,
    lora: LoraFormatInfo | None,
    adapter_config: bytes | None,
    expected_base_model: str | None,
    problems: list[ValidationProblem],
    *,
    metadata: Mapping[str, str] | None = None,
    pickle_globals: tuple[str, ...] = (),
) -> ArtifactReport:
    config, config_problems = parse_peft_config(adapter_config) if adapter_config is not None else (None, [])
    problems = problems + config_problems
    if lora is not None:
        # With a config, rank_pattern may explain differing ranks, and check_against_tensors checks each one.
        problems += [p for p in lora.problems if config is None or p.code != "mixed_ranks"]
    if config is not None and lora is not None:
        problems += check_against_tensors(config, lora, expected_base_model=expected_base_model)
    return ArtifactReport(
        container=container,
        format=lora.format if lora else LoraFormat.UNKNOWN,
        rank=lora.rank if lora else None,
        ranks=lora.ranks if lora else (),
        target_modules=lora.target_modules if lora else (),
        dtypes=lora.dtypes if lora else (),
        parameter_count=lora.parameter_count if lora else 0,
        tensor_count=lora.tensor_count if lora else 0,
        problems=tuple(problems),
        peft_type=config.peft_type if config else None,
        base_model=config.base_model_name_or_path if config else None,
        metadata=metadata or {},
        pickle_globals=pickle_globals,
    )
