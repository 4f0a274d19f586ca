"""Device detection: nvidia-smi CSV onto the deploy API's gpu enum, the CPU device, and the devices setting."""

from __future__ import annotations

import pytest

from agents.node.gpus import DetectedGpu, GpuType, cpu_device, parse_devices_override, parse_nvidia_smi

# What a real H100 answered (driver 580.159.04), DESIGN.md.
H100_LINE = "0, NVIDIA H100 80GB HBM3, 81559 MiB, GPU-d806f8e7-9523-d3cd-86cd-9f231e882104"
HEADER = "index, name, memory.total [MiB], uuid"
GIB = 1024**3


def test_the_real_h100_line_maps_to_h100_80gb_with_its_uuid() -> None:
    assert parse_nvidia_smi(H100_LINE + "\n") == [
        DetectedGpu(
            index=0,
            name="NVIDIA H100 80GB HBM3",
            memory_mb=81559,
            uuid="GPU-d806f8e7-9523-d3cd-86cd-9f231e882104",
            gpu_type=GpuType.H100_80GB,
        )
    ]


@pytest.mark.parametrize(
    "text",
    [
        f"{HEADER}\n{H100_LINE}\n",  # --format=csv
        f"{H100_LINE}\n",  # --format=csv,noheader
        f"{HEADER}\n0, NVIDIA H100 80GB HBM3, 81559, GPU-d806f8e7-9523-d3cd-86cd-9f231e882104\n",  # nounits
        "0, NVIDIA H100 80GB HBM3, 81559, GPU-d806f8e7-9523-d3cd-86cd-9f231e882104",  # noheader,nounits
        f"\r\n{HEADER}\r\n{H100_LINE}\r\n\r\n",
    ],
)
def test_header_and_unit_variants_read_the_same(text: str) -> None:
    (gpu,) = parse_nvidia_smi(text)
    assert (gpu.index, gpu.memory_mb, gpu.gpu_type) == (0, 81559, GpuType.H100_80GB)
    assert gpu.uuid == "GPU-d806f8e7-9523-d3cd-86cd-9f231e882104"


@pytest.mark.parametrize(
    ("name", "memory", "expected"),
    [
        ("NVIDIA L4", 23034, GpuType.L4_24GB),
        ("NVIDIA L40S", 46068, GpuType.L40S_48GB),
        ("NVIDIA A100-SXM4-80GB", 81920, GpuType.A100_80GB),
        ("NVIDIA A100 80GB PCIe", 81920, GpuType.A100_80GB),
        ("NVIDIA H100 PCIe", 81559, GpuType.H100_80GB),
        ("NVIDIA H200", 143771, GpuType.H200_141GB),
        ("NVIDIA B200", 183359, GpuType.B200_180GB),
        ("NVIDIA B300 SXM6 AC", 275040, GpuType.B300_270GB),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", 97887, GpuType.RTXPRO6000_96GB),
        ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 97887, GpuType.RTXPRO6000_96GB),
        # Same chip, another size, or another chip with a similar name: `other`.
        ("NVIDIA A100-SXM4-40GB", 40960, GpuType.OTHER),
        ("NVIDIA A100-PCIE-40GB", 40960, GpuType.OTHER),
        ("NVIDIA H100 NVL", 95830, GpuType.OTHER),
        ("NVIDIA GH200 480GB", 97871, GpuType.OTHER),
        ("NVIDIA L40", 46068, GpuType.OTHER),
        ("NVIDIA RTX 6000 Ada Generation", 49140, GpuType.OTHER),
        ("Tesla T4", 15360, GpuType.OTHER),
    ],
)
def test_name_and_memory_map_through_one_table(name: str, memory: int, expected: GpuType) -> None:
    (gpu,) = parse_nvidia_smi(f"3, {name}, {memory} MiB, GPU-0000\n")
    assert gpu.gpu_type is expected
    assert gpu.name == name  # the raw name is kept, `other` included
    assert gpu.index == 3


def test_several_gpus_keep_their_order_and_indexes() -> None:
    text = "\n".join(
        [
            HEADER,
            "0, NVIDIA L4, 23034 MiB, GPU-aaaa",
            "1, NVIDIA L4, 23034 MiB, GPU-bbbb",
            "2, Some Future Card, 65536 MiB, GPU-cccc",
        ]
    )
    gpus = parse_nvidia_smi(text)
    assert [(g.index, g.uuid, g.gpu_type) for g in gpus] == [
        (0, "GPU-aaaa", GpuType.L4_24GB),
        (1, "GPU-bbbb", GpuType.L4_24GB),
        (2, "GPU-cccc", GpuType.OTHER),
    ]
    assert gpus[2].name == "Some Future Card"


@pytest.mark.parametrize("text", ["", "\n", "   \n\n", HEADER + "\n"])
def test_no_output_means_no_devices(text: str) -> None:
    assert parse_nvidia_smi(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "0, NVIDIA H100 80GB HBM3, 81559 MiB\n",  # a field missing
        "x, NVIDIA H100 80GB HBM3, 81559 MiB, GPU-1\n",
        "0, NVIDIA H100 80GB HBM3, [N/A], GPU-1\n",
        "0, NVIDIA H100 80GB HBM3, 80 GiB, GPU-1\n",
        "No devices were found\n",
    ],
)
def test_unreadable_output_is_an_error_naming_the_line(text: str) -> None:
    with pytest.raises(ValueError, match="nvidia-smi line 1"):
        parse_nvidia_smi(text)


def test_a_cpu_node_has_one_cpu_device_with_the_host_memory() -> None:
    assert cpu_device(16 * GIB) == DetectedGpu(0, "cpu", 16 * 1024, "cpu-0", GpuType.CPU)


def test_devices_override() -> None:
    assert parse_devices_override("cpu:1", total_memory_bytes=8 * GIB) == [cpu_device(8 * GIB)]
    eight = parse_devices_override("H100-80GB:8", total_memory_bytes=GIB)
    assert [g.index for g in eight] == list(range(8))
    assert {(g.gpu_type, g.memory_mb) for g in eight} == {(GpuType.H100_80GB, 80 * 1024)}
    assert len({g.uuid for g in eight}) == 8
    mixed = parse_devices_override(" h200-141gb , L4-24GB:2", total_memory_bytes=GIB)
    assert [(g.index, g.gpu_type, g.memory_mb) for g in mixed] == [
        (0, GpuType.H200_141GB, 141 * 1024),
        (1, GpuType.L4_24GB, 24 * 1024),
        (2, GpuType.L4_24GB, 24 * 1024),
    ]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("other:1", "concrete type"),
        ("H100:1", "unknown device type 'H100'"),
        ("", "unknown device type ''"),
        ("H100-80GB:0", "must be 1 to 64"),
        ("H100-80GB:abc", "must be 1 to 64"),
        ("cpu:65", "must be 1 to 64"),
    ],
)
def test_a_bad_devices_override_says_why(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_devices_override(setting, total_memory_bytes=GIB)
