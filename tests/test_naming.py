"""Shared naming rules (seeds 002 and 004): good and bad examples for every rule."""

from __future__ import annotations

import unicodedata

import pytest
from pydantic import BaseModel, ValidationError

from streams.naming import (
    ADMIN_ENTITY_TYPES,
    DEFAULT_ENTITY_TYPE,
    FILENAME_MAX_BYTES,
    LORA_FILE_EXTENSIONS,
    MAX_UPLOAD_BYTES,
    USER_ENTITY_TYPES,
    EntityType,
    FinetuningType,
    SafeNameProblem,
    fileset_problem,
    model_reference_problem,
    safe_filename,
    versioned_name,
)

# -- model (seed 002) -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "ab",
        "llama-3-8b",
        "meta/llama-3.1-8b-instruct",
        "my-workspace/my-model",
        "m" * 63,
        "w" * 63 + "/" + "m" * 63,  # 127 characters exactly
        "ws/model@v1",
        "ws/model+lora",
        "ws/model_name",
        "a.b/c.d",
        "0123/4567",
    ],
)
def test_model_references_that_pass(ref: str) -> None:
    assert model_reference_problem(ref) is None


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("", "must not be empty"),
        ("a", "2 to 63 characters, not 1"),
        ("m" * 64, "2 to 63 characters, not 64"),
        ("w" * 63 + "/" + "m" * 64, "longer than 127"),
        ("a/b/c", "at most one '/'"),
        ("ws/", "both sides"),
        ("/model", "both sides"),
        ("/", "both sides"),
        ("x/model", "the workspace in model must be 2 to 63"),
        ("ws/m", "the model name in model must be 2 to 63"),
        ("Llama", "contains 'L'"),
        ("ws/Model", "the model name in model contains 'M'"),
        ("my model", "contains ' '"),
        ("ws/a:b", "contains ':'"),
        ("ws/mödel", "contains 'ö'"),
        ("-model", "start or end with a hyphen"),
        ("model-", "start or end with a hyphen"),
        ("ws-/model", "the workspace in model must not start or end with a hyphen"),
        ("my--model", "consecutive hyphens"),
        ("ws/my--model", "consecutive hyphens"),
        ("..", "only dots"),
        ("ws/..", "only dots"),
    ],
)
def test_model_references_that_fail(ref: str, reason: str) -> None:
    problem = model_reference_problem(ref)
    assert problem is not None and reason in problem, problem


# -- fileset (seed 002) -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["default/my-fileset", "Team_A/adapter.files-v2", "w/f"])
def test_filesets_that_pass(value: str) -> None:
    assert fileset_problem(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "{workspace}/{fileset_name}"),
        ("just-a-name", "{workspace}/{fileset_name}"),
        ("a/b/c", "{workspace}/{fileset_name}"),
        ("/files", "fileset workspace: name must not be empty"),
        ("ws/", "fileset name: name must not be empty"),
        ("my ws/files", "fileset workspace: name may contain only"),
        ("ws/fïles", "fileset name: name may contain only"),
        ("w" * 256 + "/files", "fileset workspace: name is longer than 255"),
    ],
)
def test_filesets_that_fail(value: str, reason: str) -> None:
    problem = fileset_problem(value)
    assert problem is not None and reason in problem, problem


# -- enums and limits -------------------------------------------------------------------------------


def test_finetuning_types_use_nemo_values_and_accept_either_case() -> None:
    assert [t.value for t in FinetuningType] == ["lora", "p_tuning", "all_weights"]
    assert FinetuningType("LORA") is FinetuningType.LORA
    assert FinetuningType("P_Tuning") is FinetuningType.P_TUNING
    with pytest.raises(ValueError):
        FinetuningType("qlora")

    class Body(BaseModel):
        finetuning_type: FinetuningType

    assert Body.model_validate({"finetuning_type": "ALL_WEIGHTS"}).finetuning_type is FinetuningType.ALL_WEIGHTS
    assert Body(finetuning_type=FinetuningType.LORA).model_dump(mode="json") == {"finetuning_type": "lora"}
    with pytest.raises(ValidationError):
        Body.model_validate({"finetuning_type": "dpo"})


def test_entity_types() -> None:
    assert {t.value for t in EntityType} == {"clothes", "identities", "product", "styles", "faces", "no_type_provided"}
    assert DEFAULT_ENTITY_TYPE is EntityType.NO_TYPE_PROVIDED
    assert EntityType.FACES not in USER_ENTITY_TYPES  # admin only
    assert EntityType.FACES in ADMIN_ENTITY_TYPES
    assert USER_ENTITY_TYPES < ADMIN_ENTITY_TYPES
    assert set(EntityType) == ADMIN_ENTITY_TYPES
    assert DEFAULT_ENTITY_TYPE in USER_ENTITY_TYPES


def test_upload_limits() -> None:
    assert LORA_FILE_EXTENSIONS == (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
    assert MAX_UPLOAD_BYTES == 524_288_000  # 500 MiB: a "500 MB" file by either reading fits
    assert MAX_UPLOAD_BYTES >= 500 * 10**6


# -- safe_filename (seed 004) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("my_lora.safetensors", "my_lora.safetensors"),
        ("Sh0ot1f1_01.safetensors", "Sh0ot1f1_01.safetensors"),
        ("model.ckpt", "model.ckpt"),
        ("model.pt", "model.pt"),
        ("model.pth", "model.pth"),
        ("adapter_model.bin", "adapter_model.bin"),
        ("My_LoRA.SafeTensors", "My_LoRA.safetensors"),  # the extension is lowered, the rest kept
        ("MODEL.PT", "MODEL.pt"),
        ("C:\\x\\y.pt", "y.pt"),  # a whole Windows path, as old browsers send it
        ("/home/me/loras/style.safetensors", "style.safetensors"),
        ("dir\\sub/mixed.bin", "mixed.bin"),
        ("  padded.pt  ", "padded.pt"),
        ("my lora (1).safetensors", "my lora (1).safetensors"),
        ("x.exe.safetensors", "x.exe.safetensors"),  # the last extension is what counts
        ("模型.safetensors", "模型.safetensors"),
        ("v1.2.3.pt", "v1.2.3.pt"),
    ],
)
def test_safe_filenames_that_pass(given: str, stored: str) -> None:
    assert safe_filename(given) == stored


def test_unicode_is_normalised_to_one_spelling() -> None:
    composed, decomposed = "café.pt", unicodedata.normalize("NFD", "café.pt")
    assert composed != decomposed
    assert safe_filename(composed) == safe_filename(decomposed) == composed


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("../../etc/passwd.safetensors", "'..'"),
        ("..\\..\\windows\\x.pt", "'..'"),
        ("a/../b.pt", "'..'"),
        ("a..pt", "'..'"),
        ("..", "'..'"),
        ("...", "'..'"),
        (".", "start with a dot"),
        (".safetensors", "start with a dot"),
        (".hidden.pt", "start with a dot"),
        ("", "empty"),
        ("   ", "empty"),
        ("loras/", "empty"),
        ("a\x00b.pt", "U+0000"),
        ("a\nb.bin", "U+000A"),
        ("a\rb.bin", "U+000D"),
        ("a\tb.pt", "U+0009"),
        ("a\x7fb.pt", "U+007F"),
        ("a\x85b.pt", "U+0085"),  # C1 next line
        ("evil\u202egpj.pt", "U+202E"),  # right-to-left override
        ("zero\u200bwidth.pt", "U+200B"),
        ("a\u2028b.pt", "U+2028"),
        ("no\u00a0break.pt", "U+00A0"),
        ("..\u2215..\u2215etc\u2215passwd.pt", "U+2215"),
        ("etc\u2215passwd.pt", "U+2215"),  # division slash
        ("etc\uff0fpasswd.pt", "U+FF0F"),  # fullwidth solidus
        ("etc\uff3cpasswd.pt", "U+FF3C"),  # fullwidth reverse solidus
        ("etc\u2044passwd.pt", "U+2044"),  # fraction slash
        ("\u2100.pt", "U+2100"),  # "a/c" under compatibility mapping
        ("\uff0e\uff0e.pt", "'..'"),  # fullwidth full stops
        ("a\u2025b.pt", "'..'"),  # two dot leader
        ("x" * 244 + ".safetensors", "255 bytes"),  # 256 bytes
        ("é" * 150 + ".pt", "255 bytes"),  # 150 characters, 303 bytes
        ("x" * 300 + ".pt", "255 bytes"),
        ("model.exe", "'.exe'"),
        ("model.safetensors.exe", "'.exe'"),
        ("model.safetensors.", "'.'"),
        ("model", "none"),
        ("model.safetensors.zip", "'.zip'"),
        ("model.s\u0430fetensors", "'.s\u0430fetensors'"),  # Cyrillic a
        ("model\u2024safetensors", "none"),  # one dot leader is not a dot
        ("model\uff0esafetensors", "none"),
        ("con:stream.pt", "< > :"),
        ("what?.pt", "< > :"),
        ('quote".pt', "< > :"),
        ("a|b.pt", "< > :"),
    ],
)
def test_safe_filenames_that_fail(given: str, reason: str) -> None:
    result = safe_filename(given)
    assert isinstance(result, SafeNameProblem), result
    assert reason in result.reason, result.reason
    assert str(result) == result.reason


def test_the_longest_name_passes() -> None:
    name = "x" * (FILENAME_MAX_BYTES - len(".safetensors")) + ".safetensors"
    assert safe_filename(name) == name


def test_no_stored_name_escapes_its_directory() -> None:
    attacks = ["../x.pt", "..\\x.pt", "/abs/x.pt", "C:\\x.pt", "C:x.pt", "\\\\server\\share\\x.pt", "x.pt/.."]
    for attack in attacks:
        result = safe_filename(attack)
        if isinstance(result, str):
            assert "/" not in result and "\\" not in result and ".." not in result and ":" not in result


# -- versioned_name (seed 004) ----------------------------------------------------------------------


def test_a_free_name_is_kept() -> None:
    assert versioned_name("my_lora.safetensors", []) == "my_lora.safetensors"
    assert versioned_name("my_lora.safetensors", {"other.safetensors", "my_lora.pt"}) == "my_lora.safetensors"
    assert versioned_name("x_v7.pt", set()) == "x_v7.pt"


def test_versions_count_up_from_two() -> None:
    taken: list[str] = []
    handed_out = []
    for _ in range(4):
        name = versioned_name("my_lora.safetensors", taken)
        handed_out.append(name)
        taken.append(name)
    assert handed_out == [
        "my_lora.safetensors",
        "my_lora_v2.safetensors",
        "my_lora_v3.safetensors",
        "my_lora_v4.safetensors",
    ]


def test_the_first_free_version_fills_a_gap() -> None:
    taken = {"a.pt", "a_v2.pt", "a_v4.pt"}
    assert versioned_name("a.pt", taken) == "a_v3.pt"


def test_a_versioned_name_continues_from_its_base() -> None:
    assert versioned_name("x_v2.pt", {"x_v2.pt"}) == "x_v3.pt"
    assert versioned_name("x_v2.pt", {"x_v2.pt", "x_v3.pt"}) == "x_v4.pt"
    assert versioned_name("x_v9.pt", {"x_v9.pt"}) == "x_v10.pt"
    assert versioned_name("x_v1.pt", {"x_v1.pt"}) == "x_v2.pt"
    assert versioned_name("my_lora_v2_v3.pt", {"my_lora_v2_v3.pt"}) == "my_lora_v2_v4.pt"
    assert versioned_name("_v2.pt", {"_v2.pt"}) == "_v2_v2.pt"  # no base: the whole stem is the base
    assert versioned_name("x_vx.pt", {"x_vx.pt"}) == "x_vx_v2.pt"


def test_names_differing_only_in_case_or_spelling_are_one_name() -> None:
    assert versioned_name("My_Lora.safetensors", {"my_lora.safetensors"}) == "My_Lora_v2.safetensors"
    assert versioned_name("a.pt", {"A.PT", "a_V2.pt"}) == "a_v3.pt"
    decomposed = unicodedata.normalize("NFD", "café.pt")
    assert versioned_name("café.pt", {decomposed}) == "café_v2.pt"


def test_a_name_without_extension_still_versions() -> None:
    assert versioned_name("notes", {"notes"}) == "notes_v2"


def test_a_versioned_name_never_grows_past_the_limit() -> None:
    longest = "x" * (FILENAME_MAX_BYTES - len(".safetensors")) + ".safetensors"
    second = versioned_name(longest, {longest})
    assert second.endswith("_v2.safetensors")
    assert len(second.encode()) == FILENAME_MAX_BYTES
    third = versioned_name(longest, {longest, second})
    assert third.endswith("_v3.safetensors") and len(third.encode()) == FILENAME_MAX_BYTES

    multibyte = "é" * 125 + ".pt"  # 253 bytes: the cut must not split a character
    cut = versioned_name(multibyte, {multibyte})
    assert cut == "é" * 124 + "_v2.pt"
    assert len(cut.encode()) <= FILENAME_MAX_BYTES


def test_a_handed_out_name_is_never_taken_and_always_safe() -> None:
    taken: set[str] = set()
    for given in ["a.pt", "a_v2.pt", "a.pt", "A.pt", "a_v3.pt", "a_v2.pt", "a.pt"] * 3:
        name = versioned_name(given, taken)
        assert name.lower() not in {t.lower() for t in taken}
        assert safe_filename(name) == name
        taken.add(name)
    assert len(taken) == 21


def test_versioned_name_is_deterministic() -> None:
    taken = ["b_v3.pt", "b.pt", "b_v2.pt"]
    assert versioned_name("b.pt", taken) == versioned_name("b.pt", list(reversed(taken))) == "b_v4.pt"
