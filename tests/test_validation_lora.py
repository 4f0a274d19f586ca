"""LoRA layouts (PEFT, kohya, diffusers) and adapter_config.json, on files written by the safetensors package."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save, save_file

from agents.validation import (
    ArtifactReport,
    LoraFormat,
    check_against_tensors,
    detect_lora_format,
    parse_peft_config,
    parse_safetensors,
    validate_safetensors,
)
from agents.validation.safetensors_header import SafetensorsTensor

HIDDEN = 64
LLAMA = "meta-llama/Llama-3.2-1B"


def peft_llama(rank: int = 8, layers: int = 2, modules: tuple[str, ...] = ("q_proj", "v_proj")) -> dict[str, Any]:
    tensors = {}
    for layer in range(layers):
        for module in modules:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.zeros((rank, HIDDEN), dtype=np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((HIDDEN, rank), dtype=np.float32)
    return tensors


def kohya_sdxl(rank: int = 4) -> dict[str, Any]:
    tensors: dict[str, Any] = {}
    linear = [
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 640),
        ("lora_unet_middle_block_1_transformer_blocks_0_ff_net_0_proj", 1280),
        ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 768),
        ("lora_te2_text_model_encoder_layers_0_mlp_fc1", 1280),
    ]
    for name, width in linear:
        tensors[f"{name}.lora_down.weight"] = np.zeros((rank, width), dtype=np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((width, rank), dtype=np.float16)
        tensors[f"{name}.alpha"] = np.array(rank, dtype=np.float16)
    conv = "lora_unet_input_blocks_1_0_in_layers_2"
    tensors[f"{conv}.lora_down.weight"] = np.zeros((rank, 320, 3, 3), dtype=np.float16)
    tensors[f"{conv}.lora_up.weight"] = np.zeros((320, rank, 1, 1), dtype=np.float16)
    return tensors


def diffusers_sd(rank: int = 4) -> dict[str, Any]:
    tensors = {}
    attn = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    for module in ("to_q", "to_k", "to_v", "to_out.0"):
        tensors[f"{attn}.{module}.lora_A.weight"] = np.zeros((rank, 320), dtype=np.float32)
        tensors[f"{attn}.{module}.lora_B.weight"] = np.zeros((320, rank), dtype=np.float32)
    encoder = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    tensors[f"{encoder}.lora_A.weight"] = np.zeros((rank, 768), dtype=np.float32)
    tensors[f"{encoder}.lora_B.weight"] = np.zeros((768, rank), dtype=np.float32)
    return tensors


def peft_config(**overrides: Any) -> bytes:
    config = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["v_proj", "q_proj"],
        "base_model_name_or_path": LLAMA,
        "task_type": "CAUSAL_LM",
        "modules_to_save": None,
    }
    return json.dumps(config | overrides).encode()


def validate(tmp_path: Path, tensors: dict[str, Any], **kwargs: Any) -> ArtifactReport:
    path = tmp_path / "adapter_model.safetensors"
    save_file(tensors, str(path))
    with path.open("rb") as read:
        return validate_safetensors(read, path.stat().st_size, **kwargs)


def codes(report: ArtifactReport) -> list[str]:
    return [problem.code for problem in report.problems]


def test_a_peft_llama_lora(tmp_path: Path) -> None:
    report = validate(tmp_path, peft_llama(), adapter_config=peft_config(), expected_base_model=LLAMA)
    assert report.ok, report.problems
    assert (report.format, report.rank, report.target_modules) == (LoraFormat.PEFT_LLM, 8, ("q_proj", "v_proj"))
    assert (report.dtypes, report.tensor_count, report.parameter_count) == (("F32",), 8, 2 * 2 * 2 * 8 * HIDDEN)
    assert (report.peft_type, report.base_model) == ("LORA", LLAMA)


def test_a_kohya_sdxl_lora(tmp_path: Path) -> None:
    report = validate(tmp_path, kohya_sdxl())
    assert report.ok, report.problems
    assert (report.format, report.rank, report.dtypes) == (LoraFormat.KOHYA_IMAGE, 4, ("F16",))
    assert report.target_modules == ("attn1_to_q", "ff_net_0_proj", "in_layers_2", "mlp_fc1", "self_attn_q_proj")


def test_a_diffusers_lora(tmp_path: Path) -> None:
    report = validate(tmp_path, diffusers_sd())
    assert report.ok, report.problems
    assert (report.format, report.rank) == (LoraFormat.DIFFUSERS_IMAGE, 4)
    assert report.target_modules == ("q_proj", "to_k", "to_out.0", "to_q", "to_v")


@pytest.mark.parametrize(
    ("a", "b", "target"),
    [
        ("attn1.processor.to_q_lora.down.weight", "attn1.processor.to_q_lora.up.weight", "to_q"),
        ("attn1.to_q.lora.down.weight", "attn1.to_q.lora.up.weight", "to_q"),
    ],
)
def test_older_diffusers_layouts(tmp_path: Path, a: str, b: str, target: str) -> None:
    block = "unet.mid_block.attentions.0.transformer_blocks.0"
    tensors = {f"{block}.{a}": np.zeros((4, 32), np.float32), f"{block}.{b}": np.zeros((32, 4), np.float32)}
    report = validate(tmp_path, tensors)
    assert (report.format, report.rank, report.target_modules, report.problems) == (
        LoraFormat.DIFFUSERS_IMAGE,
        4,
        (target,),
        (),
    )


def test_a_flux_transformer_lora_is_diffusers(tmp_path: Path) -> None:
    name = "transformer.single_transformer_blocks.0.attn.to_q"
    tensors = {f"{name}.lora_A.weight": np.zeros((16, 64), np.float32)}
    tensors[f"{name}.lora_B.weight"] = np.zeros((64, 16), np.float32)
    assert validate(tmp_path, tensors).format is LoraFormat.DIFFUSERS_IMAGE


def test_a_gpt2_style_peft_lora_stays_an_llm(tmp_path: Path) -> None:
    name = "base_model.model.transformer.h.0.attn.c_attn"
    tensors = {f"{name}.lora_A.weight": np.zeros((8, 64), np.float32)}
    tensors[f"{name}.lora_B.weight"] = np.zeros((192, 8), np.float32)
    tensors["base_model.model.transformer.wte.lora_embedding_A"] = np.zeros((8, 100), np.float32)
    tensors["base_model.model.transformer.wte.lora_embedding_B"] = np.zeros((64, 8), np.float32)
    report = validate(tmp_path, tensors)
    assert (report.format, report.rank, report.target_modules) == (LoraFormat.PEFT_LLM, 8, ("c_attn", "wte"))


def test_a_full_model_is_not_a_lora(tmp_path: Path) -> None:
    report = validate(tmp_path, {"model.embed_tokens.weight": np.zeros((10, 4), np.float32)})
    assert report.format is LoraFormat.UNKNOWN and codes(report) == ["no_lora_tensors"]


def test_a_missing_partner_and_a_wrong_inner_dim(tmp_path: Path) -> None:
    tensors = peft_llama()
    del tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"] = np.zeros((HIDDEN, 4), np.float32)
    report = validate(tmp_path, tensors)
    assert codes(report) == ["unpaired_lora_tensor", "lora_shape_mismatch"]
    assert "layers.1.self_attn.v_proj (A [8, 64], B [64, 4])" in report.problems[1].message


def test_mixed_ranks_are_reported_with_the_ranks_found(tmp_path: Path) -> None:
    tensors = peft_llama() | peft_llama(rank=16, layers=1, modules=("k_proj",))
    report = validate(tmp_path, tensors)
    assert codes(report) == ["mixed_ranks"] and report.rank is None and report.ranks == (8, 16)
    assert report.problems[0].message == "the LoRA rank differs between modules: 8 (4 modules), 16 (1 modules)"


def test_rank_pattern_explains_mixed_ranks(tmp_path: Path) -> None:
    tensors = peft_llama() | peft_llama(rank=16, layers=1, modules=("k_proj",))
    targets = ["q_proj", "k_proj", "v_proj"]
    explained = peft_config(target_modules=targets, rank_pattern={"model.layers.0.self_attn.k_proj": 16})
    assert validate(tmp_path, tensors, adapter_config=explained).ok
    unexplained = peft_config(target_modules=targets)
    report = validate(tmp_path, tensors, adapter_config=unexplained)
    assert [p.message for p in report.problems] == [
        "adapter_config.json: 1 modules have rank 16 in the weights, but the config says 8"
    ]


def test_the_config_must_agree_with_the_tensors(tmp_path: Path) -> None:
    config = peft_config(r=16, target_modules=["q_proj"], base_model_name_or_path="mistralai/Mistral-7B-v0.1")
    report = validate(tmp_path, peft_llama(), adapter_config=config, expected_base_model=LLAMA)
    assert codes(report) == ["rank_mismatch", "target_modules_mismatch", "base_model_mismatch"]
    mismatch = report.problems[2].message
    assert "mistralai/Mistral-7B-v0.1" in mismatch and LLAMA in mismatch


def test_base_model_names_compare_without_case_or_revision() -> None:
    config, problems = parse_peft_config(peft_config(base_model_name_or_path="Meta-Llama/llama-3.2-1b@main"))
    assert config is not None and not problems
    info = detect_lora_format(_shapes(peft_llama()))
    assert check_against_tensors(config, info, expected_base_model=LLAMA) == []


def test_a_regex_target_is_accepted_without_running_it() -> None:
    config, problems = parse_peft_config(peft_config(target_modules=r".*\.(q|v)_proj"))
    assert config is not None and config.target_modules == r".*\.(q|v)_proj" and not problems
    assert check_against_tensors(config, detect_lora_format(_shapes(peft_llama()))) == []


def test_a_null_base_model_is_recorded() -> None:
    config, problems = parse_peft_config(peft_config(base_model_name_or_path=None, task_type=None))
    assert config is not None and config.base_model_name_or_path is None and not problems


def test_another_peft_type_is_parsed_but_unsupported() -> None:
    config, problems = parse_peft_config(json.dumps({"peft_type": "IA3", "target_modules": ["k_proj"]}).encode())
    assert config is not None and config.peft_type == "IA3" and not config.is_lora
    assert [p.code for p in problems] == ["unsupported_peft_type"] and "'IA3'" in problems[0].message


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", "not_json"),
        (b"[]", "not_object"),
        (json.dumps({"r": 8}).encode(), "bad_peft_type"),
        (peft_config(r=0), "bad_rank"),
        (peft_config(r="8"), "bad_rank"),
        (peft_config(r=True), "bad_rank"),
        (peft_config(lora_alpha=-1), "bad_alpha"),
        (peft_config(lora_alpha=None), "bad_alpha"),
        (peft_config(target_modules=[]), "bad_target_modules"),
        (peft_config(target_modules=["q_proj", 3]), "bad_target_modules"),
        (peft_config(base_model_name_or_path=7), "bad_base_model"),
        (peft_config(task_type="MAKE_COFFEE"), "bad_task_type"),
        (peft_config(modules_to_save="lm_head"), "bad_modules_to_save"),
        (peft_config(rank_pattern={"q_proj": -2}), "bad_rank_pattern"),
    ],
)
def test_bad_configs(data: bytes, code: str) -> None:
    config, problems = parse_peft_config(data)
    assert config is None and [p.code for p in problems] == [code]


def test_a_bad_config_is_reported_next_to_a_good_file(tmp_path: Path) -> None:
    report = validate(tmp_path, peft_llama(), adapter_config=b"{")
    assert report.format is LoraFormat.PEFT_LLM and codes(report) == ["not_json"]


def test_a_broken_header_still_reports_the_config(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes((10).to_bytes(8, "little") + b"{not json}")
    with path.open("rb") as read:
        report = validate_safetensors(read, 18, adapter_config=peft_config(r=0), expected_base_model=None)
    assert report.format is LoraFormat.UNKNOWN and codes(report) == ["header_not_json", "bad_rank"]


def _shapes(tensors: dict[str, Any]) -> Mapping[str, SafetensorsTensor]:
    """The tensors of a real file holding `tensors`, as its header lists them."""
    data = save(tensors)
    info = parse_safetensors(io.BytesIO(data), len(data))
    assert not isinstance(info, list)
    return info.tensors
