"""Pickle scanning: hand-built hostile pickles are refused and never run; real torch checkpoints pass."""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import shlex
import subprocess
import sys
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.validation import LoraFormat, PickleScan, scan_pickle, scan_torch_file, validate_torch_file
from agents.validation.pickle_scan import ALLOWED_GLOBALS

MEMOIZE, STACK_GLOBAL, POP, TUPLE1, MARK, TUPLE, REDUCE, STOP = b"\x94", b"\x93", b"0", b"\x85", b"(", b"t", b"R", b"."


def short_str(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def long_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data  # BINUNICODE


def binget(index: int) -> bytes:
    return b"h" + bytes([index])


def protocol0(module: str, name: str, argument: str) -> bytes:
    """module.name(argument), as `pickle` wrote it before protocol 2."""
    return f"c{module}\n{name}\n(V{argument}\ntR.".encode("raw-unicode-escape")


def protocol4(module: str, name: str, *arguments: str) -> bytes:
    """module.name(*arguments), the global resolved by STACK_GLOBAL from memoized strings."""
    call = short_str(module) + MEMOIZE + short_str(name) + MEMOIZE + STACK_GLOBAL + MEMOIZE
    return b"\x80\x04" + call + MARK + b"".join(long_str(a) for a in arguments) + TUPLE + REDUCE + STOP


def through_memo_with_decoys(module: str, name: str, argument: str) -> bytes:
    """STACK_GLOBAL whose operands come from the memo, right after harmless-looking strings."""
    stash = short_str(module) + MEMOIZE + POP + short_str(name) + MEMOIZE + POP
    decoys = short_str("torch._utils") + short_str("_rebuild_tensor_v2") + POP + POP
    call = binget(0) + binget(1) + STACK_GLOBAL + long_str(argument) + TUPLE1 + REDUCE + STOP
    return b"\x80\x04" + stash + decoys + call


def creates_file(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


PAYLOADS: dict[str, Callable[[Path], bytes]] = {
    "os.system-protocol0": lambda m: protocol0("os", "system", f"touch {shlex.quote(str(m))}"),
    "posix.system-protocol0": lambda m: protocol0("posix", "system", f"touch {shlex.quote(str(m))}"),
    "builtins.eval-protocol0": lambda m: protocol0("builtins", "eval", creates_file(m)),
    "builtins.eval-protocol4": lambda m: protocol4("builtins", "eval", creates_file(m)),
    "os.system-memo-decoys": lambda m: through_memo_with_decoys("os", "system", f"touch {shlex.quote(str(m))}"),
    "subprocess.Popen-protocol4": lambda m: (
        b"\x80\x04"
        + short_str("subprocess")
        + MEMOIZE
        + short_str("Popen")
        + MEMOIZE
        + STACK_GLOBAL
        + MEMOIZE
        + MARK
        + long_str(sys.executable)
        + long_str("-c")
        + long_str(creates_file(m))
        + TUPLE
        + TUPLE1
        + REDUCE
        + STOP
    ),
}


def codes(scan: PickleScan) -> list[str]:
    return [problem.code for problem in scan.problems]


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_the_payloads_are_live(tmp_path: Path, payload: Callable[[Path], bytes]) -> None:
    """Control: unpickling each payload does run it, so the refusals below are worth something."""
    marker = tmp_path / "ran"
    result = pickle.loads(payload(marker))
    if isinstance(result, subprocess.Popen):
        result.wait(timeout=10)
    assert marker.exists()


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_hostile_pickles_are_refused_without_running(tmp_path: Path, payload: Callable[[Path], bytes]) -> None:
    marker = tmp_path / "ran"
    data = payload(marker)
    for scan in (scan_pickle(io.BytesIO(data)), scan_torch_file(io.BytesIO(data))):
        assert codes(scan) == ["unsafe_pickle"], scan.problems
        assert "only torch tensor-rebuild globals are allowed" in scan.problems[0].message
    assert not marker.exists()


def test_the_resolved_global_is_named() -> None:
    scan = scan_pickle(io.BytesIO(through_memo_with_decoys("os", "system", "true")))
    assert scan.globals == ("os.system",)
    assert scan.problems[0].message == "pickle: refers to os.system; only torch tensor-rebuild globals are allowed"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_harmless_ordered_dict_passes(protocol: int) -> None:
    data = pickle.dumps(OrderedDict(steps=3, lr=1e-4, name="run", sizes=(1, 2), nested={"a": [1, 2]}), protocol)
    scan = scan_torch_file(io.BytesIO(data))
    assert scan.ok, scan.problems
    assert set(scan.globals) <= {"collections.OrderedDict"}


def test_persistent_ids_are_allowed() -> None:
    assert scan_pickle(io.BytesIO(b"\x80\x02" + long_str("storage") + b"Q.")).ok


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\x80\x02ccollections\nOrderedDict\n}b.", "applies BUILD to collections.OrderedDict itself"),
        pytest.param(b"\x80\x02ccollections\nOrderedDict\n)R)R.", "calls an object that is not an allowed global"),
        pytest.param(
            b"\x80\x04ccollections\nOrderedDict\n)R" + short_str("system") + STACK_GLOBAL + STOP,
            "a global's module or name is computed while loading; refusing to guess",
        ),
        pytest.param(b"\x80\x02\x82\x01.", "loads a global through the copyreg extension registry"),
        pytest.param(
            b"\x80\x04" + short_str("torch") + short_str("_utils._rebuild_tensor_v2") + STACK_GLOBAL + STOP,
            "refers to torch._utils._rebuild_tensor_v2; only torch tensor-rebuild globals are allowed",
        ),
        pytest.param(b"ctorch Size\nx\n.", "names the global 'torch Size x', which can be split more than one way"),
        pytest.param(b"(ibuiltins\nexec\n.", "refers to builtins.exec; only torch tensor-rebuild globals are allowed"),
    ],
    ids=["build-on-a-class", "call-a-result", "unresolved-operand", "extension", "dotted-name", "two-spaces", "inst"],
)
def test_other_ways_to_run_code_are_refused(data: bytes, message: str) -> None:
    scan = scan_pickle(io.BytesIO(data))
    assert [p.message for p in scan.problems] == [f"pickle: {message}"]


def test_a_truncated_or_garbled_pickle_is_a_problem() -> None:
    data = pickle.dumps(OrderedDict(a=1, b=[1, 2, 3]), protocol=2)
    assert codes(scan_torch_file(io.BytesIO(data[:-3]))) == ["garbled"]
    assert codes(scan_torch_file(io.BytesIO(b"\xff\xfe not a pickle"))) == ["garbled"]
    assert codes(scan_torch_file(io.BytesIO(b""))) == ["garbled"]
    assert codes(scan_torch_file(io.BytesIO(data + b"trailing"))) == ["garbled"]
    assert codes(scan_pickle(io.BytesIO(b"\x80\x02)0."))) == ["garbled"]  # POP leaves nothing to return


def test_every_pickle_in_a_row_is_scanned(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps({"harmless": 1}, protocol=2) + PAYLOADS["builtins.eval-protocol4"](marker)
    assert codes(scan_torch_file(io.BytesIO(data))) == ["unsafe_pickle"]
    assert not marker.exists()


def test_a_length_prefix_cannot_exhaust_memory() -> None:
    huge_string = b"\x80\x04\x8d" + (2**62).to_bytes(8, "little")  # BINUNICODE8 of 4 EiB
    assert codes(scan_pickle(io.BytesIO(huge_string))) == ["too_large"]
    harmless = pickle.dumps(list(range(1000)))
    assert codes(scan_pickle(io.BytesIO(harmless), max_bytes=100)) == ["too_large"]


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_zip_checkpoint_with_a_bad_global_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = PAYLOADS["os.system-protocol0"](marker)
    path = write_zip(tmp_path / "model.pt", {"archive/data.pkl": payload, "archive/version": b"3\n"})
    with path.open("rb") as read:
        scan = scan_torch_file(read)
    assert codes(scan) == ["unsafe_pickle"] and scan.globals == ("os.system",)
    assert not marker.exists()


def test_every_pkl_member_of_a_zip_is_scanned(tmp_path: Path) -> None:
    members = {"archive/data.pkl": pickle.dumps({}, 2), "archive/constants.pkl": protocol0("os", "system", "true")}
    with write_zip(tmp_path / "model.pt", members).open("rb") as read:
        assert codes(scan_torch_file(read)) == ["unsafe_pickle"]


def test_a_zip_without_data_pkl_or_unreadable_is_refused(tmp_path: Path) -> None:
    with write_zip(tmp_path / "model.pt", {"archive/weights.npy": b"\0" * 16}).open("rb") as read:
        assert codes(scan_torch_file(read)) == ["no_data_pkl"]
    assert codes(scan_torch_file(io.BytesIO(b"PK\x03\x04" + b"\0" * 100))) == ["bad_zip"]


def test_a_tar_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("pickle")
        data = pickle.dumps({"a": 1}, protocol=2)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with path.open("rb") as read:
        assert codes(scan_torch_file(read)) == ["tar_checkpoint"]


def test_allowed_names_are_not_rewritten_by_pickles_python2_mapping() -> None:
    for qualified in ALLOWED_GLOBALS:
        module, _, name = qualified.rpartition(".")
        assert module not in _compat_pickle.IMPORT_MAPPING
        assert (module, name) not in _compat_pickle.NAME_MAPPING


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_real_torch_checkpoints_pass(tmp_path: Path, legacy: bool) -> None:
    import torch

    state: dict[str, torch.Tensor] = {}
    for layer in range(2):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            state[f"{prefix}.lora_A.weight"] = torch.zeros(8, 32, dtype=torch.bfloat16)
            state[f"{prefix}.lora_B.weight"] = torch.zeros(32, 8, dtype=torch.bfloat16)
    path = tmp_path / "adapter_model.bin"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    with path.open("rb") as read:
        report = validate_torch_file(read, path.stat().st_size)
    assert report.ok, report.problems
    assert (report.format, report.rank, report.target_modules) == (LoraFormat.PEFT_LLM, 8, ("q_proj", "v_proj"))
    assert (report.dtypes, report.tensor_count, report.parameter_count) == (("BF16",), 8, 2 * 2 * 2 * 8 * 32)
    # The empty OrderedDict is each tensor's backward hooks.
    assert set(report.pickle_globals) == {
        "torch._utils._rebuild_tensor_v2",
        "torch.BFloat16Storage",
        "collections.OrderedDict",
    }

    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": torch.nn.Linear(4, 2).state_dict(), "epoch": 3, "dtype": torch.float16}, checkpoint)
    with checkpoint.open("rb") as read:
        scan = scan_torch_file(read)
    assert scan.ok, scan.problems
    assert {name: (t.dtype, t.shape) for name, t in scan.tensors.items()} == {
        "weight": ("F32", (2, 4)),
        "bias": ("F32", (2,)),
    }
