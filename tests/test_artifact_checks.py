"""The artifacts agent's pure choices: which file holds the weights, what the first bytes say a file is."""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save

from agents.artifacts.checks import (
    NO_LORA,
    UNKNOWN_CONTAINER,
    choose_weights,
    problems_of,
    rejection_reason,
    sniff_container,
    validate_weights,
)
from agents.validation import Container


@pytest.mark.parametrize(
    ("paths", "chosen"),
    [
        (["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"], "adapter_model.safetensors"),
        (["README.md", "adapter_model.bin", "other.safetensors"], "other.safetensors"),
        (["adapter_config.json", "adapter_model.bin", "x.pt"], "adapter_model.bin"),
        (["weights.ckpt", "notes.txt"], "weights.ckpt"),
        (["model.PTH"], "model.PTH"),
        (["adapter_config.json", "README.md"], None),
        ([], None),
    ],
)
def test_choose_weights_prefers_what_cannot_run_code(paths: list[str], chosen: str | None) -> None:
    assert choose_weights(paths) == chosen


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    return save(tensors)


def test_sniff_reads_content_not_names() -> None:
    assert sniff_container(_safetensors({"a": np.zeros(2, dtype=np.float32)})[:16]) is Container.SAFETENSORS
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    assert sniff_container(zipped.getvalue()[:16]) is Container.TORCH
    assert sniff_container(pickle.dumps({"a": 1}, protocol=2)[:16]) is Container.TORCH
    assert sniff_container(b"GIF89a....") is None
    assert sniff_container(b"") is None
    # a length prefix followed by something that is not JSON is not safetensors
    assert sniff_container(struct.pack("<Q", 100) + b"[") is None


def test_a_file_that_is_neither_is_refused_whatever_its_name() -> None:
    data = b"just some text pretending to be adapter_model.safetensors"
    report = validate_weights(io.BytesIO(data), len(data))
    assert report is UNKNOWN_CONTAINER
    assert problems_of(report) == [UNKNOWN_CONTAINER]


def test_safetensors_without_lora_pairs_is_not_a_lora() -> None:
    data = _safetensors({"model.embed_tokens.weight": np.zeros((4, 4), dtype=np.float32)})
    report = validate_weights(io.BytesIO(data), len(data))
    assert {p.code for p in problems_of(report)} & {"no_lora_tensors", NO_LORA.code}


def test_a_kohya_lora_passes_and_a_reason_names_the_file() -> None:
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    data = _safetensors(
        {
            f"{stem}.lora_down.weight": np.zeros((4, 32), dtype=np.float16),
            f"{stem}.lora_up.weight": np.zeros((32, 4), dtype=np.float16),
            f"{stem}.alpha": np.array(4.0, dtype=np.float16),
        }
    )
    report = validate_weights(io.BytesIO(data), len(data))
    assert problems_of(report) == []
    assert rejection_reason([UNKNOWN_CONTAINER], "x.bin").startswith("x.bin: ")


def test_peft_config_disagreeing_with_the_tensors_is_a_problem() -> None:
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    data = _safetensors(
        {
            f"{prefix}.lora_A.weight": np.zeros((8, 64), dtype=np.float32),
            f"{prefix}.lora_B.weight": np.zeros((64, 8), dtype=np.float32),
        }
    )
    config = json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 16, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}
    ).encode()
    report = validate_weights(io.BytesIO(data), len(data), adapter_config=config)
    assert problems_of(report), "rank 16 in the config but 8 in the tensors must be refused"
