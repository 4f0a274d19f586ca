"""The vLLM command line and environment for one instance, and the check of a deployment's `extra_args`.

Pure: nothing is started here. The argv is run without a shell, so shell metacharacters in it are inert; what matters
is that no extra argument can move vLLM off the address the node chose, change what the control plane set, or make
vLLM read a file or run code from the model repository.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from agents.node.gpus import GpuType
from streams.deployments import VLLM_LORA_RANKS

API_SERVER = "vllm.entrypoints.openai.api_server"
HOST = "127.0.0.1"
MAX_NUM_GPUS = 8
MAX_BATCH_SIZE = 256
DEFAULT_MAX_LORA_RANK = 16  # vLLM's default, used when no adapter rank is known yet


@dataclass(frozen=True)
class VllmSpec:
    model: str  # weights: a local path or a Hugging Face repo id
    served_model_name: str
    gpu_type: GpuType
    num_gpus: int = 1
    max_batch_size: int = 96
    revision: str | None = None
    # The allocated devices' nvidia-smi indexes; ignored on a CPU node.
    device_indexes: tuple[int, ...] = ()
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK
    max_cpu_loras: int | None = None
    extra_args: tuple[str, ...] = ()
    # Where it listens: 127.0.0.1 by default, or the address the node advertises to the gateway.
    host: str = HOST
    # vLLM's own API key (passed as VLLM_API_KEY, so it shows in no argv or log): only the gateway knows it.
    api_key: str | None = None


class InvalidVllmSpec(ValueError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


def build_vllm_command(spec: VllmSpec, *, python: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The argv that starts vLLM's OpenAI server for `spec`, and the environment to add to the inherited one.

    Raises InvalidVllmSpec listing every problem of the spec and its extra_args.
    """
    problems = spec_problems(spec, port) + check_extra_args(spec.extra_args)
    if problems:
        raise InvalidVllmSpec(problems)
    argv = [python, "-m", API_SERVER, "--model", spec.model]
    if spec.revision:
        argv += ["--revision", spec.revision]
    argv += ["--served-model-name", spec.served_model_name, "--host", spec.host, "--port", str(port)]
    argv += ["--tensor-parallel-size", str(spec.num_gpus), "--max-num-seqs", str(spec.max_batch_size)]
    env: dict[str, str] = {}
    if spec.api_key:
        env["VLLM_API_KEY"] = spec.api_key
    if spec.enable_lora:
        argv += ["--enable-lora", "--max-loras", str(spec.max_loras), "--max-lora-rank", str(spec.max_lora_rank)]
        if spec.max_cpu_loras is not None:
            argv += ["--max-cpu-loras", str(spec.max_cpu_loras)]
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if spec.gpu_type is not GpuType.CPU:
        # CUDA numbers devices fastest first unless told otherwise; nvidia-smi numbers them by PCI bus id.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(index) for index in spec.device_indexes)
    return argv + list(spec.extra_args), env


def spec_problems(spec: VllmSpec, port: int) -> list[str]:
    problems = []
    for field, value in (("model", spec.model), ("served_model_name", spec.served_model_name), ("host", spec.host)):
        if not value or value.startswith("-"):
            problems.append(f"{field} {value!r} must be non-empty and must not start with '-'")
    if spec.revision is not None and (not spec.revision or spec.revision.startswith("-")):
        problems.append(f"revision {spec.revision!r} must be non-empty and must not start with '-'")
    if not 1 <= spec.num_gpus <= MAX_NUM_GPUS:
        problems.append(f"num_gpus {spec.num_gpus} must be 1 to {MAX_NUM_GPUS}")
    if not 1 <= spec.max_batch_size <= MAX_BATCH_SIZE:
        problems.append(f"max_batch_size {spec.max_batch_size} must be 1 to {MAX_BATCH_SIZE}")
    if not 1 <= port <= 65535:
        problems.append(f"port {port} must be 1 to 65535")
    if spec.gpu_type is not GpuType.CPU:
        indexes = spec.device_indexes
        if len(indexes) != spec.num_gpus or len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
            problems.append(f"device_indexes {list(indexes)} must be {spec.num_gpus} distinct GPU indexes")
    if spec.enable_lora:
        if spec.max_loras < 1:
            problems.append(f"max_loras {spec.max_loras} must be at least 1")
        if spec.max_lora_rank not in VLLM_LORA_RANKS:
            problems.append(f"max_lora_rank {spec.max_lora_rank} is not one vLLM accepts: {list(VLLM_LORA_RANKS)}")
        if spec.max_cpu_loras is not None and spec.max_cpu_loras < spec.max_loras:
            problems.append(
                f"max_cpu_loras {spec.max_cpu_loras} must be >= max_loras {spec.max_loras}, as vLLM requires"
            )
    return problems


def choose_max_lora_rank(ranks: Iterable[int]) -> int:
    """The smallest --max-lora-rank vLLM accepts that fits every rank; vLLM's default 16 when there is none.

    Raises ValueError for a rank below 1 or above 512, the largest rank vLLM serves.
    """
    largest = 0
    for rank in ranks:
        if rank < 1:
            raise ValueError(f"LoRA rank {rank} is not a rank: it must be at least 1")
        largest = max(largest, rank)
    if largest == 0:
        return DEFAULT_MAX_LORA_RANK
    for allowed in VLLM_LORA_RANKS:
        if allowed >= largest:
            return allowed
    raise ValueError(f"LoRA rank {largest} is above {VLLM_LORA_RANKS[-1]}, the largest max_lora_rank vLLM accepts")


# --- extra_args ---------------------------------------------------------------------------------------------------

Check = Callable[[str], str | None]  # a value's problem, or None


def _integer(low: int) -> Check:
    def check(value: str) -> str | None:
        if not re.fullmatch(r"[0-9]+", value) or int(value) < low:
            return f"takes a whole number of at least {low}, not {value!r}"
        return None

    return check


def _fraction(value: str) -> str | None:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number <= 1:
        return f"takes a fraction above 0 and at most 1, not {value!r}"
    return None


def _one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"takes one of {', '.join(choices)}, not {value!r}"

    return check


def _word(value: str) -> str | None:
    # Method and dtype names (fp8, awq_marlin, fp8_e4m3): their lists change with every vLLM release.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        return f"takes a name of letters, digits, '_', '.' and '-', not {value!r}"
    return None


# Flags a deployment may add, each with the check of its value (None: a switch that takes no value).
ALLOWED_FLAGS: Mapping[str, Check | None] = {
    "--dtype": _one_of("auto", "half", "float16", "bfloat16", "float", "float32"),
    "--max-model-len": _integer(1),
    "--gpu-memory-utilization": _fraction,
    "--kv-cache-dtype": _word,
    "--quantization": _word,
    "--seed": _integer(0),
    "--block-size": _integer(1),
    "--max-num-batched-tokens": _integer(1),
    "--max-logprobs": _integer(0),
    "--tokenizer-mode": _one_of("auto", "slow", "mistral"),
    "--enforce-eager": None,
    "--enable-prefix-caching": None,
    "--no-enable-prefix-caching": None,
    "--enable-chunked-prefill": None,
    "--disable-log-stats": None,
    "--disable-custom-all-reduce": None,
}

_SET_BY_AGENT = "is set by the node agent: vLLM listens where the node says, on a port it chose"
_FROM_DEPLOYMENT = "is set from the deployment ({})"
_LORA = "is set from the deployment's LoRA settings; adapters are loaded by the node agent"
# Flags refused whatever their value: (reason, whether values follow the flag).
REFUSED_FLAGS: Mapping[str, tuple[str, bool]] = {
    "--host": (_SET_BY_AGENT, True),
    "--port": (_SET_BY_AGENT, True),
    "--api-key": ("is set by the node agent: each engine has its own key, known only to the gateway", True),
    "--model": (_FROM_DEPLOYMENT.format("hf.repo"), True),
    "--revision": (_FROM_DEPLOYMENT.format("hf.revision"), True),
    "--served-model-name": (_FROM_DEPLOYMENT.format("model_name"), True),
    "--tensor-parallel-size": (_FROM_DEPLOYMENT.format("num_gpus"), True),
    "--pipeline-parallel-size": ("would use GPUs the scheduler did not allocate; the GPU count is num_gpus", True),
    "--data-parallel-size": ("would use GPUs the scheduler did not allocate; the GPU count is num_gpus", True),
    "--max-num-seqs": (_FROM_DEPLOYMENT.format("max_batch_size"), True),
    "--enable-lora": (_LORA, False),
    "--max-loras": (_LORA, True),
    "--max-lora-rank": (_LORA, True),
    "--max-cpu-loras": (_LORA, True),
    "--lora-modules": (_LORA, True),
    "--download-dir": ("names a directory on the node; the node agent decides where weights go", True),
    "--tokenizer": ("names another repository or a local path; the tokenizer comes with the weights", True),
    "--trust-remote-code": ("would run Python code from the model repository on the node", False),
    "--chat-template": ("takes a file path on the node (or an inline template); use the model's own template", True),
    "--device": ("was removed in vLLM 0.10: vLLM detects its platform, CUDA_VISIBLE_DEVICES picks the GPUs", True),
    "--swap-space": ("was removed in vLLM 0.18: the V1 engine never used it", True),
    "--disable-log-requests": ("was removed in vLLM 0.12: request logging is off by default", False),
}


def check_extra_args(args: Sequence[str]) -> list[str]:
    """Every problem with a deployment's extra_args, each saying why; empty when they may be passed to vLLM."""
    problems: list[str] = []
    seen: set[str] = set()
    position = 0
    while position < len(args):
        token = args[position]
        at = f"extra_args[{position}] {token!r}"
        position += 1
        if any(character in token for character in "\x00\r\n"):
            problems.append(f"{at}: contains a NUL byte or a line break")
            continue
        if token.startswith("-") and not token.startswith("--"):
            problems.append(f"{at}: short options are not accepted; use the --long form")
            position += _skipped_value(args, position, token)
            continue
        if not token.startswith("--"):
            problems.append(f"{at}: has no flag before it")
            continue
        flag, has_inline, inline = token.partition("=")
        if flag in REFUSED_FLAGS:
            reason, takes_values = REFUSED_FLAGS[flag]
            problems.append(f"{at}: {flag} {reason}")
            while takes_values and not has_inline and position < len(args) and not args[position].startswith("--"):
                position += 1
            continue
        if flag not in ALLOWED_FLAGS:
            problems.append(f"{at}: {flag} is not on the allowlist ({', '.join(ALLOWED_FLAGS)})")
            position += _skipped_value(args, position, token)
            continue
        if flag in seen:
            problems.append(f"{at}: {flag} is given more than once")
        seen.add(flag)
        check = ALLOWED_FLAGS[flag]
        if check is None:
            if has_inline:
                problems.append(f"{at}: {flag} is a switch and takes no value")
            continue
        if has_inline:
            value = inline
        elif position < len(args) and not args[position].startswith("--"):
            value = args[position]
            at = f"extra_args[{position}] {value!r}"
            position += 1
        else:
            problems.append(f"{at}: {flag} needs a value")
            continue
        if problem := _value_problem(value, check):
            problems.append(f"{at}: {flag} {problem}")
    return problems


def _skipped_value(args: Sequence[str], position: int, token: str) -> int:
    """1 when the token after an unknown option looks like its value (already refused with it), else 0."""
    has_value = "=" not in token and position < len(args) and not args[position].startswith("-")
    return 1 if has_value else 0


def _value_problem(value: str, check: Check) -> str | None:
    if any(character in value for character in "\x00\r\n"):
        return "value contains a NUL byte or a line break"
    if value.startswith(("/", "~")) or ".." in value:
        return f"value {value!r} looks like a path; extra_args may not name files on the node"
    return check(value)
