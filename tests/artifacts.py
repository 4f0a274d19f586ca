"""Real artifacts for tests and benches: LoRA files in safetensors and torch formats, broken ones,
and a pickle that would run code if anything loaded it."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save as save_safetensors

# Attention projections of an SD-style UNet, as kohya's sd-scripts name them.
KOHYA_MODULES: tuple[str, ...] = tuple(
    f"lora_unet_down_blocks_{block}_attentions_{attention}_transformer_blocks_0_attn1_{proj}"
    for block in range(2)
    for attention in range(2)
    for proj in ("to_q", "to_k", "to_v")
)
_DTYPES = {"F32": 4, "F16": 2, "BF16": 2}


def kohya_lora_tensors(
    rank: int = 4, dim: int = 32, modules: Sequence[str] = KOHYA_MODULES, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module in modules:
        tensors[f"{module}.lora_down.weight"] = rng.standard_normal((rank, dim)).astype(np.float16)
        tensors[f"{module}.lora_up.weight"] = np.zeros((dim, rank), dtype=np.float16)
        tensors[f"{module}.alpha"] = np.array(float(rank), dtype=np.float16)
    return tensors


def kohya_lora(rank: int = 4, dim: int = 32, seed: int = 0) -> bytes:
    """A kohya-style image LoRA in safetensors; `seed` changes its bytes."""
    return save_safetensors(kohya_lora_tensors(rank, dim, seed=seed), metadata={"ss_network_dim": str(rank)})


def torch_lora_checkpoint(rank: int = 4, dim: int = 32, seed: int = 0) -> bytes:
    """The same LoRA as a torch checkpoint (`torch.save`: a ZIP holding a pickle and the tensor data)."""
    import torch

    state = {k: torch.from_numpy(v.copy()) for k, v in kohya_lora_tensors(rank, dim, seed=seed).items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def malformed_safetensors_header() -> bytes:
    header = b'{"lora_unet_x.lora_down.weight": {"dtype": "F16", "shape": [4, 8], '  # cut: not JSON
    return struct.pack("<Q", len(header)) + header + bytes(64)


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    return data[: int(len(data) * keep)]


class _RunsCode:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def code_running_pickle(marker: Path) -> bytes:
    """A pickle whose loading would run `touch marker` (through `posix.system`): must never be loaded."""
    return pickle.dumps({"lora_unet_x.lora_down.weight": _RunsCode(f"touch {marker}")}, protocol=2)


def safetensors_header(
    tensors: dict[str, tuple[str, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> bytes:
    """The 8-byte length and JSON header for tensors laid out one after another, in the given order."""
    entries: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = _DTYPES[dtype] * int(np.prod(shape, dtype=np.int64))
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # safetensors pads the header to 8 bytes
    return struct.pack("<Q", len(header)) + header


def large_kohya_lora(target_bytes: int, rank: int = 128, dim: int = 4096) -> tuple[bytes, int]:
    """A valid kohya LoRA header for about `target_bytes` of F32 tensor data, and that data's size.

    The data is all zeros: write the header, then that many zero bytes (see `write_large_kohya_lora`).
    """
    per_module = 2 * rank * dim * 4 + 4
    count = max(1, target_bytes // per_module)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i in range(count):
        module = f"lora_unet_up_blocks_{i // 10}_attentions_{i % 10}_transformer_blocks_0_attn2_to_k"
        tensors[f"{module}.lora_down.weight"] = ("F32", (rank, dim))
        tensors[f"{module}.lora_up.weight"] = ("F32", (dim, rank))
        tensors[f"{module}.alpha"] = ("F32", ())
    return safetensors_header(tensors), count * per_module


def write_large_kohya_lora(path: Path, target_bytes: int, *, random_data: bool = False) -> int:
    """Write a valid kohya LoRA of about `target_bytes` to `path` without holding it in memory; its size. The tensors
    are zeros, or random bytes (incompressible, as trained weights are) with `random_data`."""
    header, data_size = large_kohya_lora(target_bytes - 64 * 1024)
    block = os.urandom(1024 * 1024) if random_data else bytes(1024 * 1024)
    with path.open("wb") as out:
        out.write(header)
        left = data_size
        while left:
            left -= out.write(block[: min(left, len(block))])
            if random_data:
                block = block[4096:] + block[:4096]  # no two blocks alike: nothing to deduplicate
    return path.stat().st_size
