"""Pickle-based checkpoints (.pt .pth .ckpt .bin) scanned opcode by opcode, never unpickled.

Unpickling calls any importable function the file names, so the scan replays the unpickler's stack on
inert stand-ins: every global must be one of the tensor-rebuild names torch itself writes, every call must
be to such a global, and nothing may mutate a class. The same replay recovers the state dict's tensor
names, dtypes and shapes, so a checkpoint gets the same format checks as a safetensors file.
"""

from __future__ import annotations

import pickletools
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, cast

from agents.validation.safetensors_header import ValidationProblem, capped, read_exactly

DEFAULT_MAX_PICKLE_BYTES = 100 * 1024 * 1024
ZIP_MAGIC = b"PK\x03\x04"
# The first pickle of torch's legacy (pre-1.6) format; torch.load reads exactly five pickles, then raw storage bytes.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PICKLES = 5

STORAGE_DTYPES: Mapping[str, str] = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
}
TORCH_DTYPES: Mapping[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "uint16": "U16",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
    "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}
REBUILD_TENSOR = frozenset(
    {"torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3"}
)
REBUILD_PARAMETER = frozenset({"torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"})
REBUILD_FROM_TYPE = "torch._tensor._rebuild_from_type_v2"
# Compared as written, not through pickle's Python 2 import mapping: none of these is a key of that mapping.
ALLOWED_GLOBALS = frozenset(
    {
        *REBUILD_TENSOR,
        *REBUILD_PARAMETER,
        REBUILD_FROM_TYPE,
        "torch.serialization._get_layout",
        "torch.Size",
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "collections.OrderedDict",
        "_codecs.encode",  # how protocol 2 spells a bytes object
        *(f"torch.{name}" for name in STORAGE_DTYPES),
        *(f"torch.{name}" for name in TORCH_DTYPES),
    }
)


@dataclass(frozen=True)
class PickledTensor:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PickleScan:
    globals: tuple[str, ...]
    problems: tuple[ValidationProblem, ...]
    # The state dict's tensors, when the pickle is one; keys that do not hold a recognisable tensor are left out.
    tensors: Mapping[str, PickledTensor] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def scan_pickle(read: BinaryIO, *, max_bytes: int = DEFAULT_MAX_PICKLE_BYTES) -> PickleScan:
    """Scan one pickle, from the current position up to its STOP opcode."""
    scanner = _Scanner()
    root = scanner.scan(_Budget(read, max_bytes))
    return scanner.result(root)


def scan_torch_file(read: BinaryIO, *, max_pickle_bytes: int = DEFAULT_MAX_PICKLE_BYTES) -> PickleScan:
    """Scan what `torch.load` would unpickle: every `*.pkl` of a ZIP checkpoint, else the leading pickles.

    `read` must be at the start of the file, and seekable when the file is a ZIP archive.
    """
    head = read_exactly(read, tarfile.BLOCKSIZE)
    if head.startswith(ZIP_MAGIC):
        read.seek(0)
        return _scan_zip(read, max_pickle_bytes)
    if _is_tar(head):
        # torch.load tries its pre-0.4 tar format first and unpickles the members; a file can be a tar and a
        # harmless-looking series of pickles at once, so a tar header alone is refused.
        problem = _problem("tar_checkpoint", "the file is a tar archive (torch's pre-0.4 format), which is refused")
        return PickleScan(globals=(), problems=(problem,))
    return _scan_raw(_Budget(read, max_pickle_bytes, pending=head))


def _is_tar(block: bytes) -> bool:
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _problem(code: str, message: str) -> ValidationProblem:
    return ValidationProblem(code, f"pickle: {message}")


def _scan_raw(budget: _Budget) -> PickleScan:
    scanner = _Scanner()
    roots = [scanner.scan(budget)]
    legacy = roots[0] == LEGACY_MAGIC
    # A legacy file continues with raw storage bytes that torch reads without unpickling; anything else must be
    # pickles up to the end, since there is no telling which of them a loader will unpickle.
    while not scanner.garbled and (len(roots) < LEGACY_PICKLES if legacy else not budget.at_eof()):
        roots.append(scanner.scan(budget))
    # The state dict is the fourth pickle of the legacy format (after magic, protocol version and system info).
    return scanner.result(roots[3] if legacy and len(roots) == LEGACY_PICKLES else roots[0])


def _scan_zip(read: BinaryIO, limit: int) -> PickleScan:
    scanner = _Scanner()
    main: object = None
    try:
        with zipfile.ZipFile(read) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".pkl")]
            if not any(info.filename.rsplit("/", 1)[-1] == "data.pkl" for info in members):
                scanner.problems.append(_problem("no_data_pkl", "the ZIP archive has no data.pkl; not a torch file"))
            for info in members:
                if info.file_size > limit:
                    scanner.problems.append(
                        _problem("too_large", f"{info.filename} has {info.file_size} bytes; at most {limit} allowed")
                    )
                    continue
                with archive.open(info) as member:
                    root = scanner.scan(_Budget(member, limit))
                if info.filename.rsplit("/", 1)[-1] == "data.pkl":
                    main = root
    # zipfile raises many types on a damaged or unusual archive (bad CRC, encryption, unknown compression).
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError, ValueError):
        scanner.problems.append(_problem("bad_zip", "the file starts like a ZIP archive but cannot be read as one"))
    return scanner.result(main)


class _TooLarge(Exception):
    pass


class _Budget:
    """A reader that refuses to hand out more than `limit` bytes, so no length prefix can exhaust memory."""

    def __init__(self, raw: IO[bytes], limit: int, *, pending: bytes = b"") -> None:
        self._raw, self._left, self._pending, self._position = raw, limit, pending, 0

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._left:
            raise _TooLarge
        data, self._pending = self._pending[:n], self._pending[n:]
        if len(data) < n:
            data += self._raw.read(n - len(data))
        self._left -= len(data)
        self._position += len(data)
        return data

    def readline(self) -> bytes:
        line = b""
        if self._pending:
            line, self._pending = self._pending, b""
            if b"\n" in line:
                line, self._pending = line.split(b"\n", 1)
                line += b"\n"
        if not line.endswith(b"\n"):
            line += self._raw.readline(self._left + 1 - len(line))
        if len(line) > self._left:
            raise _TooLarge
        self._left -= len(line)
        self._position += len(line)
        return line

    def tell(self) -> int:
        return self._position

    def at_eof(self) -> bool:
        if not self._pending:
            self._pending = self._raw.read(1)
        return not self._pending


class _Mark:
    pass


MARK = _Mark()
UNKNOWN = object()


@dataclass(frozen=True)
class _Global:
    module: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class _PersistentId:
    pid: object


class _Object:
    """A dict, list or called object; mutable like the real one, so a memo reference sees later SETITEMS."""

    def __init__(self, callee: _Global | None = None, args: object = None) -> None:
        self.callee, self.args = callee, args
        self.items: dict[str, object] = {}


class _Garbled(Exception):
    pass


STRINGS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
SCALARS = frozenset(
    {
        *{"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"},
        *{"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"},
    }
)
CONSTANTS: Mapping[str, object] = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False, "EMPTY_TUPLE": ()}
PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
NEW_CONTAINERS = frozenset({"EMPTY_DICT", "EMPTY_LIST", "EMPTY_SET"})
MARKED_CONTAINERS = frozenset({"DICT", "LIST", "FROZENSET"})
FILLERS = frozenset({"SETITEMS", "APPENDS", "ADDITEMS"})
NO_OPS = frozenset({"PROTO", "FRAME", "READONLY_BUFFER", "STOP"})


class _Scanner:
    def __init__(self) -> None:
        self.problems: list[ValidationProblem] = []
        self.globals: dict[str, None] = {}
        self.garbled = False
        self._refused: set[str] = set()
        self._stack: list[object] = []
        self._memo: dict[int, object] = {}

    def scan(self, budget: _Budget) -> object:
        """Replay one pickle; its result, or UNKNOWN when it cannot be read to the end."""
        self._stack, self._memo = [], {}
        try:
            # genops only calls read, readline and tell.
            for opcode, arg, _ in pickletools.genops(cast(IO[bytes], budget)):
                self._step(opcode.name, arg)
            return self._pop()
        except _TooLarge:
            self.problems.append(_problem("too_large", "the pickle is larger than allowed"))
        except _Garbled as error:
            self.problems.append(_problem("garbled", f"the pickle is malformed ({error})"))
        # genops raises assorted errors on hostile bytes (bad opcode, short read, bad UTF-8, missing STOP).
        except Exception:
            self.problems.append(_problem("garbled", "the pickle is truncated or malformed"))
        self.garbled = True
        return UNKNOWN

    def result(self, root: object) -> PickleScan:
        tensors = _state_dict_tensors(root) if not self.problems else {}
        return PickleScan(globals=tuple(self.globals), problems=tuple(capped(self.problems)), tensors=tensors)

    def _refuse(self, key: str, message: str) -> None:
        if key not in self._refused:
            self._refused.add(key)
            self.problems.append(_problem("unsafe_pickle", message))

    def _global(self, module: object, name: object) -> object:
        if not isinstance(module, str) or not isinstance(name, str):
            self._refuse("unresolved", "a global's module or name is computed while loading; refusing to guess")
            return UNKNOWN
        found = _Global(module, name)
        self.globals[found.qualified] = None
        # A dotted name is an attribute path from protocol 4 on; torch never writes one.
        if found.qualified not in ALLOWED_GLOBALS or "." in name:
            self._refuse(found.qualified, f"refers to {found.qualified}; only torch tensor-rebuild globals are allowed")
        return found

    def _written_global(self, arg: str) -> object:
        """GLOBAL and INST name "module name"; a second space would make the split ambiguous."""
        module, _, name = arg.partition(" ")
        if " " in name:
            self._refuse("ambiguous", f"names the global {arg!r}, which can be split more than one way")
            return UNKNOWN
        return self._global(module, name)

    def _call(self, callee: object, args: object) -> object:
        if not isinstance(callee, _Global):
            self._refuse("call", "calls an object that is not an allowed global")
            return UNKNOWN
        return _Object(callee, args)

    def _mutate(self, target: object, what: str) -> None:
        if isinstance(target, _Global):
            self._refuse(f"mutate {target.qualified}", f"applies {what} to {target.qualified} itself")

    def _pop(self) -> object:
        if not self._stack or self._stack[-1] is MARK:
            raise _Garbled("stack underflow")
        return self._stack.pop()

    def _pop_mark(self) -> list[object]:
        if MARK not in self._stack:
            raise _Garbled("no MARK")
        at = len(self._stack) - 1 - self._stack[::-1].index(MARK)
        items = self._stack[at + 1 :]
        del self._stack[at:]
        return items

    def _step(self, name: str, arg: Any) -> None:
        stack, push = self._stack, self._stack.append
        if name in STRINGS or name in SCALARS:
            push(arg)
        elif name in CONSTANTS:
            push(CONSTANTS[name])
        elif name == "MARK":
            push(MARK)
        elif name in PUTS:
            if not stack or stack[-1] is MARK:
                raise _Garbled("nothing to memoize")
            self._memo[len(self._memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in GETS:
            if arg not in self._memo:
                raise _Garbled(f"memo key {arg} was never stored")
            push(self._memo[arg])
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [self._pop() for _ in range(int(name[-1]))]
            push(tuple(reversed(items)))
        elif name == "TUPLE":
            push(tuple(self._pop_mark()))
        elif name in NEW_CONTAINERS:
            push(_Object())
        elif name in MARKED_CONTAINERS:
            items = self._pop_mark()
            push(self._filled(_Object(), items) if name == "DICT" else _Object())
        elif name == "SETITEM":
            value, key = self._pop(), self._pop()
            self._filled(self._top("SETITEM"), [key, value])
        elif name in FILLERS:
            items = self._pop_mark()
            target = self._top(name)
            if name == "SETITEMS":
                self._filled(target, items)
        elif name == "APPEND":
            self._pop()
            self._top("APPEND")
        elif name == "GLOBAL":
            push(self._written_global(arg))
        elif name == "STACK_GLOBAL":
            global_name, module = self._pop(), self._pop()
            push(self._global(module, global_name))
        elif name == "REDUCE":
            args, callee = self._pop(), self._pop()
            push(self._call(callee, args))
        elif name == "NEWOBJ":
            args, cls = self._pop(), self._pop()
            push(self._call(cls, args))
        elif name == "NEWOBJ_EX":
            _kwargs, args, cls = self._pop(), self._pop(), self._pop()
            push(self._call(cls, args))
        elif name == "INST":
            args = tuple(self._pop_mark())
            push(self._call(self._written_global(arg), args))
        elif name == "OBJ":
            cls, *args = self._pop_mark() or [UNKNOWN]
            push(self._call(cls, tuple(args)))
        elif name == "BUILD":
            self._pop()
            self._top("BUILD")
        elif name == "PERSID":
            push(_PersistentId(arg))
        elif name == "BINPERSID":
            push(_PersistentId(self._pop()))
        elif name in ("EXT1", "EXT2", "EXT4"):
            self._refuse("extension", "loads a global through the copyreg extension registry")
            push(UNKNOWN)
        elif name == "POP":
            if stack and stack[-1] is MARK:
                stack.pop()
            else:
                self._pop()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            push(self._pop())
            push(stack[-1])
        elif name == "NEXT_BUFFER":
            push(UNKNOWN)
        elif name not in NO_OPS:
            raise _Garbled(f"unexpected opcode {name}")

    def _top(self, what: str) -> object:
        if not self._stack or self._stack[-1] is MARK:
            raise _Garbled(f"{what} without a target")
        target = self._stack[-1]
        self._mutate(target, what)
        return target

    @staticmethod
    def _filled(target: object, items: list[object]) -> object:
        if isinstance(target, _Object):
            for key, value in zip(items[::2], items[1::2], strict=False):
                if isinstance(key, str):
                    target.items[key] = value
        return target


def _state_dict_tensors(root: object) -> dict[str, PickledTensor]:
    """Tensors of a state dict, or of the `state_dict` entry of a training checkpoint."""
    if not isinstance(root, _Object):
        return {}
    nested = root.items.get("state_dict")
    items = nested.items if isinstance(nested, _Object) else root.items
    return {key: tensor for key, value in items.items() if (tensor := _tensor(value)) is not None}


def _tensor(value: object, depth: int = 0) -> PickledTensor | None:
    if not isinstance(value, _Object) or value.callee is None or depth > 3 or not isinstance(value.args, tuple):
        return None
    callee, args = value.callee.qualified, value.args
    if callee in REBUILD_PARAMETER and args:
        return _tensor(args[0], depth + 1)
    if callee == REBUILD_FROM_TYPE and len(args) >= 3 and isinstance(args[0], _Global):
        return _tensor(_Object(args[0], args[2]), depth + 1)
    if callee not in REBUILD_TENSOR or len(args) < 3:
        return None
    storage, size = args[0], args[2]
    shape = tuple(size) if isinstance(size, tuple) and all(_is_int(dim) for dim in size) else None
    dtype = _storage_dtype(storage)
    if callee == "torch._utils._rebuild_tensor_v3" and len(args) >= 7 and isinstance(args[6], _Global):
        dtype = TORCH_DTYPES.get(args[6].name)
    if shape is None or dtype is None:
        return None
    return PickledTensor(dtype=dtype, shape=shape)


def _storage_dtype(storage: object) -> str | None:
    # torch writes a storage as the persistent id ("storage", torch.<Type>Storage, key, location, numel, ...).
    if isinstance(storage, _PersistentId) and isinstance(storage.pid, tuple) and len(storage.pid) >= 2:
        kind, storage_type = storage.pid[0], storage.pid[1]
        if kind == "storage" and isinstance(storage_type, _Global) and storage_type.module == "torch":
            return STORAGE_DTYPES.get(storage_type.name)
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
