"""Devices of a node: `nvidia-smi` output (or a setting) mapped onto the deploy API's `gpu` enum, plus `cpu`.

Pure: the caller runs `nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv` and reads the total RAM.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

from streams.deployments import DeployGpu as GpuType  # the seed's gpu enum (plus cpu), defined once

MIB = 1024 * 1024
DIGITS = re.compile(r"[0-9]+")
MAX_OVERRIDE_COUNT = 64


@dataclass(frozen=True)
class _Row:
    pattern: re.Pattern[str]
    min_mib: int
    max_mib: int
    gpu_type: GpuType


def _row(pattern: str, min_mib: int, max_mib: int, gpu_type: GpuType) -> _Row:
    return _Row(re.compile(pattern, re.IGNORECASE), min_mib, max_mib, gpu_type)


# The one table from (name, memory.total in MiB) to the enum. Word boundaries keep L4 apart from L40S, H200 from
# GH200, B200 from GB200. Memory ranges keep other sizes of the same chip out: an A100 40GB or an H100 NVL (94 GB)
# is `other`, because a deployment asking for A100-80GB or H100-80GB was sized for that card.
GPU_TABLE: tuple[_Row, ...] = (
    _row(r"\bL4\b", 21_000, 25_000, GpuType.L4_24GB),  # NVIDIA L4: 23034 MiB
    _row(r"\bL40S\b", 44_000, 50_000, GpuType.L40S_48GB),  # NVIDIA L40S: 46068 MiB
    _row(r"\bA100\b", 76_000, 88_000, GpuType.A100_80GB),  # NVIDIA A100-SXM4-80GB: 81920 MiB
    _row(r"\bH100\b", 76_000, 88_000, GpuType.H100_80GB),  # NVIDIA H100 80GB HBM3: 81559 MiB
    _row(r"\bH200\b", 135_000, 150_000, GpuType.H200_141GB),  # NVIDIA H200: 143771 MiB
    _row(r"\bB200\b", 170_000, 195_000, GpuType.B200_180GB),  # NVIDIA B200: 183359 MiB
    _row(r"\bB300\b", 255_000, 300_000, GpuType.B300_270GB),
    _row(r"\bRTX PRO 6000\b.*\bBlackwell\b", 92_000, 100_000, GpuType.RTXPRO6000_96GB),  # 97887 MiB
)


@dataclass(frozen=True)
class DetectedGpu:
    """One device of a node. `memory_mb` is in MiB, as nvidia-smi reports it; `name` is kept raw."""

    index: int
    name: str
    memory_mb: int
    uuid: str
    gpu_type: GpuType


def gpu_type_for(name: str, memory_mb: int) -> GpuType:
    for row in GPU_TABLE:
        if row.pattern.search(name) and row.min_mib <= memory_mb <= row.max_mib:
            return row.gpu_type
    return GpuType.OTHER


def parse_nvidia_smi(csv_text: str) -> list[DetectedGpu]:
    """The GPUs in `nvidia-smi --query-gpu=index,name,memory.total,uuid --format=csv[,noheader][,nounits]` output.

    Raises ValueError naming the line when a line is not four fields of that query.
    """
    devices = []
    lines = [line for line in csv_text.splitlines() if line.strip()]
    for number, fields in enumerate(csv.reader(lines, skipinitialspace=True), start=1):
        fields = [field.strip() for field in fields]
        if number == 1 and fields and fields[0].lower() == "index":
            continue
        if len(fields) != 4:
            raise ValueError(f"nvidia-smi line {number}: expected index, name, memory.total, uuid; got {fields!r}")
        index, name, memory, uuid = fields
        if not DIGITS.fullmatch(index):
            raise ValueError(f"nvidia-smi line {number}: index {index!r} is not a number")
        memory_mb = _mib(memory)
        if memory_mb is None:
            raise ValueError(f"nvidia-smi line {number}: memory.total {memory!r} is not a number of MiB")
        devices.append(DetectedGpu(int(index), name, memory_mb, uuid, gpu_type_for(name, memory_mb)))
    return devices


def _mib(text: str) -> int | None:
    number, _, unit = text.partition(" ")
    if not DIGITS.fullmatch(number) or unit.strip() not in ("", "MiB"):
        return None
    return int(number)


def cpu_device(total_memory_bytes: int) -> DetectedGpu:
    """The one device of a CPU node; its memory is the host's total RAM."""
    return DetectedGpu(0, "cpu", total_memory_bytes // MIB, "cpu-0", GpuType.CPU)


def parse_devices_override(setting: str, *, total_memory_bytes: int) -> list[DetectedGpu]:
    """Devices from a setting such as "cpu:1", "H100-80GB:8" or "H100-80GB:4,L4-24GB:2" (count defaults to 1).

    GPU memory is the nominal size in the type's name; a `cpu` entry gets the host's RAM. Raises ValueError.
    """
    devices: list[DetectedGpu] = []
    for entry in setting.split(","):
        type_text, _, count_text = entry.strip().partition(":")
        gpu_type = _override_type(type_text.strip())
        count = _override_count(count_text.strip(), entry)
        for _ in range(count):
            index = len(devices)
            if gpu_type is GpuType.CPU:
                device = DetectedGpu(index, "cpu", total_memory_bytes // MIB, f"cpu-{index}", gpu_type)
            else:
                memory_mb = int(gpu_type.value.rsplit("-", 1)[1].removesuffix("GB")) * 1024
                device = DetectedGpu(index, gpu_type.value, memory_mb, f"override-{index}", gpu_type)
            devices.append(device)
    return devices


def _override_type(text: str) -> GpuType:
    for gpu_type in GpuType:
        if gpu_type.value.lower() == text.lower():
            if gpu_type is GpuType.OTHER:
                raise ValueError("devices override: name a concrete type, not 'other' (its memory is unknown)")
            return gpu_type
    allowed = ", ".join(t.value for t in GpuType if t is not GpuType.OTHER)
    raise ValueError(f"devices override: unknown device type {text!r}; use one of {allowed}")


def _override_count(text: str, entry: str) -> int:
    if not text:
        return 1
    if not DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_OVERRIDE_COUNT:
        raise ValueError(f"devices override: count in {entry.strip()!r} must be 1 to {MAX_OVERRIDE_COUNT}")
    return int(text)
