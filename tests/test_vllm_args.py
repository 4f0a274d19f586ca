"""The vLLM command line, the extra_args allowlist and the choice of --max-lora-rank."""

from __future__ import annotations

import pytest

from agents.node.gpus import GpuType
from agents.node.vllm_args import (
    REFUSED_FLAGS,
    InvalidVllmSpec,
    VllmSpec,
    build_vllm_command,
    check_extra_args,
    choose_max_lora_rank,
)

PYTHON = "/opt/vllm/bin/python"


def gpu_spec(**changes: object) -> VllmSpec:
    fields: dict[str, object] = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "served_model_name": "acme/llama-8b",
        "gpu_type": GpuType.H100_80GB,
        "num_gpus": 2,
        "max_batch_size": 96,
        "device_indexes": (2, 3),
        "enable_lora": True,
        "max_loras": 4,
        "max_lora_rank": 64,
        "max_cpu_loras": 16,
    }
    fields.update(changes)
    return VllmSpec(**fields)  # type: ignore[arg-type]


def test_gpu_deployment_with_two_gpus_and_lora() -> None:
    argv, env = build_vllm_command(gpu_spec(extra_args=("--dtype", "bfloat16")), python=PYTHON, port=41001)
    assert argv == [
        PYTHON,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name",
        "acme/llama-8b",
        "--host",
        "127.0.0.1",
        "--port",
        "41001",
        "--tensor-parallel-size",
        "2",
        "--max-num-seqs",
        "96",
        "--enable-lora",
        "--max-loras",
        "4",
        "--max-lora-rank",
        "64",
        "--max-cpu-loras",
        "16",
        "--dtype",
        "bfloat16",
    ]
    assert env == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "2,3",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    }


def test_revision_follows_the_model() -> None:
    argv, _ = build_vllm_command(gpu_spec(revision="a1b2c3"), python=PYTHON, port=41001)
    assert argv[3:7] == ["--model", "meta-llama/Llama-3.1-8B-Instruct", "--revision", "a1b2c3"]


def test_cpu_deployment_sets_no_cuda_variables_and_no_device_flag() -> None:
    spec = VllmSpec(model="/data/models/tiny-llama", served_model_name="tiny", gpu_type=GpuType.CPU, max_batch_size=4)
    argv, env = build_vllm_command(spec, python="python3", port=8123)
    assert argv == [
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/data/models/tiny-llama",
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--tensor-parallel-size",
        "1",
        "--max-num-seqs",
        "4",
    ]
    assert env == {}


def test_cpu_deployment_with_lora_allows_runtime_updates() -> None:
    spec = VllmSpec(
        model="/m", served_model_name="tiny", gpu_type=GpuType.CPU, enable_lora=True, max_loras=2, max_lora_rank=8
    )
    argv, env = build_vllm_command(spec, python="python3", port=8123)
    assert argv[-5:] == ["--enable-lora", "--max-loras", "2", "--max-lora-rank", "8"]
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"num_gpus": 9, "device_indexes": tuple(range(9))}, "num_gpus 9 must be 1 to 8"),
        ({"max_batch_size": 0}, "max_batch_size 0 must be 1 to 256"),
        ({"max_batch_size": 257}, "max_batch_size 257 must be 1 to 256"),
        ({"device_indexes": (0,)}, "must be 2 distinct GPU indexes"),
        ({"device_indexes": (1, 1)}, "must be 2 distinct GPU indexes"),
        ({"max_lora_rank": 17}, "max_lora_rank 17 is not one vLLM accepts"),
        ({"max_cpu_loras": 3}, "max_cpu_loras 3 must be >= max_loras 4"),
        ({"max_loras": 0, "max_cpu_loras": None}, "max_loras 0 must be at least 1"),
        ({"model": "--trust-remote-code"}, "model '--trust-remote-code' must be non-empty"),
        ({"served_model_name": ""}, "served_model_name '' must be non-empty"),
        ({"revision": "-x"}, "revision '-x'"),
        ({"extra_args": ("--port", "1")}, "--port is set by the node agent"),
    ],
)
def test_a_bad_spec_is_refused_with_every_problem(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(InvalidVllmSpec) as raised:
        build_vllm_command(gpu_spec(**changes), python=PYTHON, port=41001)
    assert any(problem in p for p in raised.value.problems), raised.value.problems


def test_a_bad_port_is_refused() -> None:
    with pytest.raises(InvalidVllmSpec, match="port 0 must be 1 to 65535"):
        build_vllm_command(gpu_spec(), python=PYTHON, port=0)


def test_all_spec_problems_are_listed_together() -> None:
    with pytest.raises(InvalidVllmSpec) as raised:
        build_vllm_command(
            gpu_spec(max_batch_size=0, max_lora_rank=3, extra_args=("--host", "0.0.0.0")), python="p", port=1
        )
    assert len(raised.value.problems) == 3


# --- extra_args --------------------------------------------------------------------------------------------------


def test_allowed_extra_args_pass() -> None:
    args = [
        "--dtype",
        "float16",
        "--max-model-len=4096",
        "--gpu-memory-utilization",
        "0.85",
        "--enforce-eager",
        "--kv-cache-dtype",
        "fp8_e4m3",
        "--quantization",
        "awq_marlin",
        "--seed",
        "0",
        "--block-size",
        "16",
        "--enable-prefix-caching",
        "--max-num-batched-tokens",
        "8192",
        "--tokenizer-mode",
        "mistral",
        "--disable-log-stats",
    ]
    assert check_extra_args(args) == []
    assert check_extra_args([]) == []


@pytest.mark.parametrize(("flag", "entry"), sorted(REFUSED_FLAGS.items()))
def test_every_refused_flag_is_refused_with_its_reason(flag: str, entry: tuple[str, bool]) -> None:
    reason, takes_values = entry
    args = [flag, "value"] if takes_values else [flag]
    assert check_extra_args(args) == [f"extra_args[0] {flag!r}: {flag} {reason}"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port=1"], "--port is set by the node agent"),
        (["--host=0.0.0.0"], "--host is set by the node agent"),
        (["--api-key=secret"], "--api-key is set by the node agent: each engine has its own key"),
        (["--model=other/model"], "--model is set from the deployment (hf.repo)"),
        (["--served-model-name=x"], "--served-model-name is set from the deployment (model_name)"),
        (["--tensor-parallel-size=8"], "--tensor-parallel-size is set from the deployment (num_gpus)"),
        (["--download-dir=/tmp"], "--download-dir names a directory on the node"),
        (["--lora-modules", "a=/x", "b=/y"], "--lora-modules is set from the deployment's LoRA settings"),
        (["--trust-remote-code"], "would run Python code from the model repository"),
        (["--chat-template=/etc/passwd"], "--chat-template takes a file path"),
    ],
)
def test_refused_flags_in_every_form(args: list[str], expected: str) -> None:
    (problem,) = check_extra_args(args)
    assert expected in problem


@pytest.mark.parametrize(
    "args",
    [
        ["--quantization", "/etc/passwd"],
        ["--kv-cache-dtype=~/.ssh/id_rsa"],
        ["--quantization", "../../secrets"],
        ["--dtype=/tmp/x"],
        ["--max-model-len", "~root"],
    ],
)
def test_path_values_are_refused(args: list[str]) -> None:
    (problem,) = check_extra_args(args)
    assert "looks like a path; extra_args may not name files on the node" in problem


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--load-format", "dummy"], "--load-format is not on the allowlist"),
        (["--load-format=dummy"], "--load-format is not on the allowlist"),
        (["bfloat16"], "has no flag before it"),
        (["-tp", "2"], "short options are not accepted"),
        (["--dtype", "half\n--port"], "NUL byte or a line break"),
        (["--enforce-eager\x00"], "NUL byte or a line break"),
        (["--dtype"], "--dtype needs a value"),
        (["--enforce-eager=true"], "--enforce-eager is a switch and takes no value"),
        (["--gpu-memory-utilization", "1.5"], "takes a fraction above 0 and at most 1"),
        (["--gpu-memory-utilization", "nan"], "takes a fraction above 0 and at most 1"),
        (["--seed", "-1"], "takes a whole number of at least 0"),
        (["--dtype", "int8"], "takes one of auto, half"),
        (["--quantization", "fp8;rm -rf x"], "takes a name of letters"),
        (["--seed", "1", "--seed", "2"], "--seed is given more than once"),
    ],
)
def test_other_problems_say_why(args: list[str], expected: str) -> None:
    (problem,) = check_extra_args(args)
    assert expected in problem


def test_a_flag_missing_its_value_does_not_swallow_the_next_flag() -> None:
    assert check_extra_args(["--dtype", "--enforce-eager"]) == ["extra_args[0] '--dtype': --dtype needs a value"]


def test_every_problem_is_reported_with_its_position() -> None:
    problems = check_extra_args(["--port", "1", "--dtype", "/x", "stray", "--enforce-eager"])
    assert problems == [
        "extra_args[0] '--port': --port is set by the node agent: vLLM listens where the node says, on a port it chose",
        "extra_args[3] '/x': --dtype value '/x' looks like a path; extra_args may not name files on the node",
        "extra_args[4] 'stray': has no flag before it",
    ]


# --- --max-lora-rank ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranks", "expected"),
    [
        ([9], 16),
        ([1], 1),
        ([2], 8),
        ([8, 4], 8),
        ([100, 200], 256),
        ([257], 320),
        ([320], 320),
        ([321], 512),
        ([512], 512),
        ([], 16),
    ],
)
def test_max_lora_rank_is_the_smallest_vllm_value_that_fits(ranks: list[int], expected: int) -> None:
    assert choose_max_lora_rank(ranks) == expected


def test_a_rank_above_512_is_an_error() -> None:
    with pytest.raises(ValueError, match="LoRA rank 513 is above 512"):
        choose_max_lora_rank([8, 513])
    with pytest.raises(ValueError, match="at least 1"):
        choose_max_lora_rank([0])


def test_the_node_s_address_and_the_engine_s_key_never_show_in_the_argv() -> None:
    argv, env = build_vllm_command(gpu_spec(host="10.0.0.7", api_key="s3cret"), python=PYTHON, port=41001)
    assert argv[argv.index("--host") + 1] == "10.0.0.7"
    assert env["VLLM_API_KEY"] == "s3cret" and "s3cret" not in " ".join(argv)
    _, without = build_vllm_command(gpu_spec(), python=PYTHON, port=41001)
    assert "VLLM_API_KEY" not in without
    with pytest.raises(InvalidVllmSpec, match="host"):
        build_vllm_command(gpu_spec(host="--evil"), python=PYTHON, port=41001)
