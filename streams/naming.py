"""Naming rules the API and the agents share: NeMo's `model` and `fileset` (seed 002), the file API's
entity types, extensions, size limit and safe, versioned file names (seed 004). Pure functions."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from streams.names import name_problem

# -- seed 002: Create Adapter -----------------------------------------------------------------------

MODEL_REFERENCE_MAX_LENGTH = 127
MODEL_NAME_MIN_LENGTH = 2
MODEL_NAME_MAX_LENGTH = 63
DESCRIPTION_MAX_LENGTH = 1000

# "lowercase, digits, hyphens, and temporarily @ . + _" (seed 002).
_MODEL_SEGMENT_CHARS = re.compile(r"^[a-z0-9@.+_-]+$")
_MODEL_SEGMENT_BAD_CHAR = re.compile(r"[^a-z0-9@.+_-]")


class FinetuningType(StrEnum):
    # NeMo's values, lower case: the NeMo Microservices SDK declares
    # `FinetuningType = Literal["p_tuning", "lora", "all_weights"]`
    # (nemo_microservices/types/shared/finetuning_type.py, 1.0.x), and its docs list
    # `finetuning_type: Literal['p_tuning', 'lora', 'all_weights']` (docs.nvidia.com/nemo/microservices/
    # 25.9.0/pysdk/types/common_types/parameter_efficient_finetuning_data_de_param.html).
    # The seed writes them upper case ("LORA, P_TUNING, etc."), so either case is accepted.
    LORA = "lora"
    P_TUNING = "p_tuning"
    ALL_WEIGHTS = "all_weights"

    @classmethod
    def _missing_(cls, value: object) -> FinetuningType | None:
        if isinstance(value, str):
            lowered = value.lower()
            for member in cls:
                if member.value == lowered:
                    return member
        return None


def _model_segment_problem(segment: str, what: str) -> str | None:
    if not MODEL_NAME_MIN_LENGTH <= len(segment) <= MODEL_NAME_MAX_LENGTH:
        return f"{what} must be {MODEL_NAME_MIN_LENGTH} to {MODEL_NAME_MAX_LENGTH} characters, not {len(segment)}"
    if not _MODEL_SEGMENT_CHARS.match(segment):
        bad = _MODEL_SEGMENT_BAD_CHAR.search(segment)
        shown = repr(bad.group()) if bad else "a character"
        return f"{what} contains {shown}: use lowercase letters, digits, hyphens, or @ . + _"
    if segment.startswith("-") or segment.endswith("-"):
        return f"{what} must not start or end with a hyphen"
    if "--" in segment:
        return f"{what} must not contain consecutive hyphens"
    if not segment.strip("."):
        # Ours, not NeMo's: "." and ".." are path components wherever a reference becomes a path.
        return f"{what} must not be only dots"
    return None


def model_reference_problem(ref: str) -> str | None:
    """Why `ref` is not a valid NeMo `model` reference (`name` or `workspace/name`), or None when it is.

    Each segment of `workspace/model_name` follows the single-name rule, 2-63 characters included:
    the seed says "each segment is a valid name", and a valid name is the one it has just defined.
    """
    if not ref:
        return "model must not be empty"
    if len(ref) > MODEL_REFERENCE_MAX_LENGTH:
        return f"model is longer than {MODEL_REFERENCE_MAX_LENGTH} characters"
    segments = ref.split("/")
    if len(segments) > 2:
        return "model may contain at most one '/' (workspace/model_name)"
    if len(segments) == 1:
        return _model_segment_problem(ref, "model name")
    workspace, model_name = segments
    if not workspace or not model_name:
        return "model needs a name on both sides of '/' (workspace/model_name)"
    return _model_segment_problem(workspace, "the workspace in model") or _model_segment_problem(
        model_name, "the model name in model"
    )


def fileset_problem(value: str) -> str | None:
    """Why `value` is not `{workspace}/{fileset_name}` with two valid entity names, or None when it is."""
    parts = value.split("/")
    if len(parts) != 2:
        return "fileset must be {workspace}/{fileset_name}"
    workspace, fileset_name = parts
    if problem := name_problem(workspace):
        return f"fileset workspace: {problem}"
    if problem := name_problem(fileset_name):
        return f"fileset name: {problem}"
    return None


# -- seed 004: the LoRA file API --------------------------------------------------------------------


class EntityType(StrEnum):
    CLOTHES = "clothes"
    IDENTITIES = "identities"
    PRODUCT = "product"
    STYLES = "styles"
    FACES = "faces"  # admin upload only
    NO_TYPE_PROVIDED = "no_type_provided"  # the default when a request names none


DEFAULT_ENTITY_TYPE = EntityType.NO_TYPE_PROVIDED
USER_ENTITY_TYPES: frozenset[EntityType] = frozenset(
    {
        EntityType.CLOTHES,
        EntityType.IDENTITIES,
        EntityType.PRODUCT,
        EntityType.STYLES,
        EntityType.NO_TYPE_PROVIDED,
    }
)
ADMIN_ENTITY_TYPES: frozenset[EntityType] = USER_ENTITY_TYPES | {EntityType.FACES}

LORA_FILE_EXTENSIONS: tuple[str, ...] = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# "Maximum file size: 500MB" read as 500 MiB (524,288,000 bytes): the larger reading refuses no file
# that fits under either one, and `500 * 1024 * 1024` is how upload services usually write that limit.
MAX_UPLOAD_BYTES = 500 * 1024 * 1024
FILENAME_MAX_BYTES = 255  # what ext4, XFS, APFS and NTFS allow for one path component

# Not separators anywhere, but they look like one to a person reading the name.
_LOOKALIKE_SEPARATORS = frozenset("\u2044\u2215\u2216\u29f5\u29f8\u29f9\ufe68\uff0f\uff3c")
_WINDOWS_RESERVED = frozenset('<>:"|?*')
_VERSIONED_STEM = re.compile(r"^(?P<base>.+)_v(?P<number>[0-9]+)$")


@dataclass(frozen=True)
class SafeNameProblem:
    """Why an uploaded file name was refused, in words for the caller."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def _invisible_or_control(char: str) -> bool:
    category = unicodedata.category(char)
    # Cc control (NUL, newline, DEL), Cf format (bidi overrides, zero-width), Cs surrogates, Co private
    # use, Cn unassigned, Zl/Zp line and paragraph separators, and every space but the plain one.
    return category[0] == "C" or category in ("Zl", "Zp") or (category == "Zs" and char != " ")


def _looks_like_separator(char: str) -> bool:
    if char in "/\\":
        return False  # the real ones: directory parts, dropped below
    compatible = unicodedata.normalize("NFKC", char)  # fullwidth solidus, "℀" (a/c), ...
    return char in _LOOKALIKE_SEPARATORS or "/" in compatible or "\\" in compatible


def safe_filename(name: str) -> str | SafeNameProblem:
    """The name to store an uploaded file under, or why it cannot be stored.

    Directory parts (`/` and `\\`) are dropped, since some clients send a whole path; `..` anywhere is
    refused rather than dropped, since no client sends it by accident. Unicode is normalised to NFC so
    one name has one spelling. The extension must be one of LORA_FILE_EXTENSIONS in any case, and is
    stored lower case: `a.PT` and `a.pt` are one name for versioning, and tools that list LoRA files
    match lower-case extensions. The rest of the name keeps its case.
    """
    name = unicodedata.normalize("NFC", name)
    for char in name:
        if _invisible_or_control(char):
            return SafeNameProblem(f"file name contains a control or invisible character (U+{ord(char):04X})")
        if _looks_like_separator(char):
            return SafeNameProblem(f"file name contains {char!r} (U+{ord(char):04X}), which looks like a '/'")
    if ".." in name or ".." in unicodedata.normalize("NFKC", name):
        return SafeNameProblem("file name must not contain '..'")
    name = re.split(r"[/\\]", name)[-1].strip()
    if not name:
        return SafeNameProblem("file name is empty")
    if any(char in _WINDOWS_RESERVED for char in name):
        return SafeNameProblem('file name must not contain any of < > : " | ? *')
    if name.startswith("."):
        return SafeNameProblem("file name must not start with a dot")
    if len(name.encode("utf-8")) > FILENAME_MAX_BYTES:
        return SafeNameProblem(f"file name is longer than {FILENAME_MAX_BYTES} bytes (UTF-8)")
    dot = name.rfind(".")
    extension = name[dot:].lower() if dot > 0 else ""
    if extension not in LORA_FILE_EXTENSIONS:
        shown = f"'{name[dot:]}'" if dot > 0 else "none"
        return SafeNameProblem(f"file extension {shown} is not accepted: use one of {', '.join(LORA_FILE_EXTENSIONS)}")
    return name[:dot] + extension


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).lower()


def _fit(stem: str, room: int) -> str:
    """`stem` cut to at most `room` UTF-8 bytes, on a character boundary."""
    encoded = stem.encode("utf-8")
    room = max(room, 0)
    if len(encoded) <= room:
        return stem
    return encoded[:room].decode("utf-8", errors="ignore")


def versioned_name(name: str, taken: Collection[str]) -> str:
    """`name` if free, else the first free `base_vN.ext` (N from 2, or from N+1 when `name` is `base_vN`).

    Free means not in `taken`, compared without regard to case (`A.pt` and `a.pt` would overwrite each
    other once copied to a case-insensitive file system). Never longer than FILENAME_MAX_BYTES: a long
    base is cut to make room for `_vN`. Pure: the agent that owns the entity type's partition calls it
    with every name it has handed out, which is what keeps one name from being handed out twice.
    """
    used = {_fold(t) for t in taken}
    if _fold(name) not in used:
        return name
    dot = name.rfind(".")
    stem, extension = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    versioned = _VERSIONED_STEM.match(stem)
    base, number = (versioned["base"], int(versioned["number"]) + 1) if versioned else (stem, 2)
    while True:
        suffix = f"_v{number}{extension}"
        candidate = _fit(base, FILENAME_MAX_BYTES - len(suffix.encode("utf-8"))) + suffix
        if _fold(candidate) not in used:
            return candidate
        number += 1
