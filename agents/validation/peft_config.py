"""A PEFT `adapter_config.json`, and whether it agrees with the adapter's tensors."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.validation.lora_format import LoraFormatInfo
from agents.validation.safetensors_header import ValidationProblem

MAX_CONFIG_BYTES = 1024 * 1024
TASK_TYPES = frozenset({"SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"})
# rank_pattern keys are regular expressions to PEFT; only plain module paths are matched here, because
# running a regex from an upload against names from the same upload invites catastrophic backtracking.
PLAIN_MODULE = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclass(frozen=True)
class PeftConfig:
    peft_type: str
    # The LoRA fields are None only when peft_type is not LORA.
    r: int | None
    lora_alpha: float | None
    # A list of module names, or one regular expression.
    target_modules: tuple[str, ...] | str | None
    base_model_name_or_path: str | None
    task_type: str | None
    modules_to_save: tuple[str, ...] | None = None
    rank_pattern: Mapping[str, int] = field(default_factory=dict)

    @property
    def is_lora(self) -> bool:
        return self.peft_type == "LORA"


def _problem(code: str, message: str) -> ValidationProblem:
    return ValidationProblem(code, f"adapter_config.json: {message}")


def parse_peft_config(data: bytes) -> tuple[PeftConfig | None, list[ValidationProblem]]:
    """The config, or None when it is unusable; with the problems found either way.

    A config of another PEFT type (IA3, LOHA, ...) is returned with its type and an `unsupported_peft_type` problem.
    """
    if len(data) > MAX_CONFIG_BYTES:
        return None, [_problem("too_large", f"{len(data)} bytes; at most {MAX_CONFIG_BYTES} allowed")]
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, [_problem("not_json", "not valid UTF-8 JSON")]
    if not isinstance(raw, dict):
        return None, [_problem("not_object", "not a JSON object")]
    problems: list[ValidationProblem] = []
    peft_type = raw.get("peft_type")
    base_model = raw.get("base_model_name_or_path")
    task_type = raw.get("task_type")
    if not isinstance(peft_type, str):
        problems.append(_problem("bad_peft_type", f"peft_type must be a string, not {peft_type!r}"))
    if base_model is not None and not isinstance(base_model, str):
        problems.append(_problem("bad_base_model", "base_model_name_or_path must be a string or null"))
    if task_type is not None and task_type not in TASK_TYPES:
        problems.append(_problem("bad_task_type", f"task_type {task_type!r} is not one of {sorted(TASK_TYPES)}"))
    if problems or not isinstance(peft_type, str):
        return None, problems
    if peft_type != "LORA":
        config = PeftConfig(peft_type, None, None, None, base_model, task_type)
        return config, [_problem("unsupported_peft_type", f"peft_type is {peft_type!r}; only LORA adapters are served")]
    return _lora_config(raw, base_model, task_type)


def _lora_config(
    raw: dict[str, Any], base_model: str | None, task_type: str | None
) -> tuple[PeftConfig | None, list[ValidationProblem]]:
    problems: list[ValidationProblem] = []
    r: Any = raw.get("r")
    alpha: Any = raw.get("lora_alpha")
    targets: Any = raw.get("target_modules")
    to_save: Any = raw.get("modules_to_save")
    rank_pattern: Any = raw.get("rank_pattern") or {}
    if not _positive_int(r):
        problems.append(_problem("bad_rank", f"r must be a positive integer, not {r!r}"))
    if not (_number(alpha) and alpha > 0):
        problems.append(_problem("bad_alpha", f"lora_alpha must be a positive number, not {alpha!r}"))
    if not ((isinstance(targets, str) and targets) or (_strings(targets) and targets)):
        problems.append(_problem("bad_target_modules", "target_modules must be a non-empty list of names or a regex"))
    if to_save is not None and not _strings(to_save):
        problems.append(_problem("bad_modules_to_save", "modules_to_save must be a list of names or null"))
    if not (isinstance(rank_pattern, dict) and all(_positive_int(rank) for rank in rank_pattern.values())):
        problems.append(_problem("bad_rank_pattern", "rank_pattern must map module names to positive integers"))
    if problems:
        return None, problems
    config = PeftConfig(
        peft_type="LORA",
        r=r,
        lora_alpha=float(alpha),
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        base_model_name_or_path=base_model,
        task_type=task_type,
        modules_to_save=None if to_save is None else tuple(to_save),
        rank_pattern=rank_pattern,
    )
    return config, []


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and item for item in value)


def check_against_tensors(
    config: PeftConfig, info: LoraFormatInfo, *, expected_base_model: str | None = None
) -> list[ValidationProblem]:
    """Rank, target modules and base model of the config against what the tensors hold."""
    problems: list[ValidationProblem] = []
    if config.is_lora:
        problems.extend(_rank_problems(config, info))
        problems.extend(_target_problems(config, info))
    base = config.base_model_name_or_path
    if expected_base_model is not None and base is not None and _model_id(base) != _model_id(expected_base_model):
        problems.append(
            _problem(
                "base_model_mismatch",
                f"the adapter was trained on {base!r}, but it is registered for {expected_base_model!r}",
            )
        )
    return problems


def _matches(module: str, name: str) -> bool:
    """PEFT's rule for a plain target name: the whole module path, or its last dotted components."""
    return module == name or module.endswith(f".{name}")


def _rank_problems(config: PeftConfig, info: LoraFormatInfo) -> list[ValidationProblem]:
    plain = {key: rank for key, rank in config.rank_pattern.items() if PLAIN_MODULE.match(key)}
    has_regex = len(plain) < len(config.rank_pattern)
    wrong: Counter[tuple[int, int]] = Counter()
    for module, rank in info.module_ranks.items():
        expected = next((override for key, override in plain.items() if _matches(module, key)), config.r)
        if rank != expected and not has_regex:
            wrong[(rank, expected or 0)] += 1
    return [
        _problem("rank_mismatch", f"{count} modules have rank {rank} in the weights, but the config says {expected}")
        for (rank, expected), count in sorted(wrong.items())
    ]


def _target_problems(config: PeftConfig, info: LoraFormatInfo) -> list[ValidationProblem]:
    # A string is a regex (or "all-linear"); it is not run, for the reason given at PLAIN_MODULE.
    if not isinstance(config.target_modules, tuple):
        return []
    targets = config.target_modules
    stray = sorted({module for module in info.module_ranks if not any(_matches(module, t) for t in targets)})
    if not stray:
        return []
    shown = ", ".join(stray[:3]) + (", ..." if len(stray) > 3 else "")
    return [
        _problem(
            "target_modules_mismatch",
            f"the weights adapt {len(stray)} modules not in target_modules {list(targets)}: {shown}",
        )
    ]


def _model_id(name: str) -> str:
    """Hub ids compare without case, a trailing slash or an `@revision`."""
    return name.strip().split("@", 1)[0].rstrip("/").casefold()
