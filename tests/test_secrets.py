"""Envelope encryption of secrets: every rule, against both key stores (no services needed)."""

from __future__ import annotations

import base64
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from infra.errors import is_retriable
from infra.secrets import (
    FileKeyStore,
    InMemoryKeyStore,
    KeyStore,
    SealedSecret,
    SecretBox,
    SecretShredded,
    SecretUnreadable,
    decode_master_key,
    generate_master_key,
    mask,
)

TOKEN = "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"
CONTEXT = "adapter:ws/custom_mistral_7b_lora:hf_token"
MASTER = bytes(range(32))
OTHER_MASTER = bytes(range(1, 33))


@pytest.fixture(params=["memory", "files"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> KeyStore:
    if request.param == "memory":
        return InMemoryKeyStore()
    return FileKeyStore(tmp_path / "keys")


@pytest.fixture()
def box(keys: KeyStore) -> SecretBox:
    return SecretBox(MASTER, keys)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_a_sealed_secret_opens_with_its_context(box: SecretBox) -> None:
    sealed = box.seal(TOKEN, context=CONTEXT)
    assert box.open(sealed, context=CONTEXT) == TOKEN
    assert box.open(sealed.to_string(), context=CONTEXT) == TOKEN
    assert SealedSecret.from_string(str(sealed)) == sealed


def test_unicode_and_empty_secrets_round_trip(box: SecretBox) -> None:
    for plaintext in ("", "pässwörd-🔑", "x" * 10_000):
        assert box.open(box.seal(plaintext, context=CONTEXT), context=CONTEXT) == plaintext


def test_the_same_secret_seals_differently_each_time(box: SecretBox) -> None:
    first, second = box.seal(TOKEN, context=CONTEXT), box.seal(TOKEN, context=CONTEXT)
    assert first.key_id != second.key_id
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


def test_the_compact_form(box: SecretBox) -> None:
    text = box.seal(TOKEN, context=CONTEXT).to_string()
    version, key_id, nonce, ciphertext = text.split(".")
    assert version == "v1"
    assert len(key_id) == 32 and int(key_id, 16) >= 0
    assert len(nonce) == 16  # 12 bytes, unpadded base64url
    assert len(ciphertext) < 2 * len(TOKEN)  # compact enough for an event


def test_the_plaintext_appears_nowhere(box: SecretBox, keys: KeyStore, tmp_path: Path) -> None:
    sealed = box.seal(TOKEN, context=CONTEXT)
    shown = [sealed.to_string(), str(sealed), repr(sealed), repr(box)]
    for text in shown:
        assert TOKEN not in text
        assert TOKEN[3:] not in text
        assert TOKEN[-8:] not in text
    wrapped = keys.get(sealed.key_id)
    assert wrapped is not None and TOKEN.encode() not in wrapped
    assert MASTER.hex() not in repr(box) and repr(MASTER) not in repr(box)
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert TOKEN.encode() not in file.read_bytes()


def test_a_wrong_context_does_not_open(box: SecretBox) -> None:
    sealed = box.seal(TOKEN, context=CONTEXT)
    for context in ("adapter:ws/other:hf_token", CONTEXT + " ", CONTEXT.upper()):
        with pytest.raises(SecretUnreadable):
            box.open(sealed, context=context)
    with pytest.raises(ValueError):
        box.open(sealed, context="")
    with pytest.raises(ValueError):
        box.seal(TOKEN, context="")


@pytest.mark.parametrize("part", ["nonce", "ciphertext"])
def test_an_altered_secret_does_not_open(box: SecretBox, part: str) -> None:
    sealed = box.seal(TOKEN, context=CONTEXT)
    for index in (0, len(getattr(sealed, part)) - 1):
        altered = SealedSecret(
            key_id=sealed.key_id,
            nonce=flip(sealed.nonce, index) if part == "nonce" else sealed.nonce,
            ciphertext=flip(sealed.ciphertext, index) if part == "ciphertext" else sealed.ciphertext,
        )
        with pytest.raises(SecretUnreadable):
            box.open(altered, context=CONTEXT)
    truncated = SealedSecret(key_id=sealed.key_id, nonce=sealed.nonce, ciphertext=sealed.ciphertext[:-1])
    with pytest.raises(SecretUnreadable):
        box.open(truncated, context=CONTEXT)


def test_a_secret_does_not_open_with_another_secrets_key(box: SecretBox) -> None:
    first, second = box.seal(TOKEN, context=CONTEXT), box.seal(TOKEN, context=CONTEXT)
    swapped = SealedSecret(key_id=second.key_id, nonce=first.nonce, ciphertext=first.ciphertext)
    with pytest.raises(SecretUnreadable):
        box.open(swapped, context=CONTEXT)


def test_a_wrapped_key_moved_to_another_id_does_not_open(keys: KeyStore) -> None:
    box = SecretBox(MASTER, keys)
    sealed = box.seal(TOKEN, context=CONTEXT)
    wrapped = keys.get(sealed.key_id)
    assert wrapped is not None
    moved = "0" * 32
    keys.put(moved, wrapped)
    with pytest.raises(SecretUnreadable, match="master key"):
        box.open(SealedSecret(key_id=moved, nonce=sealed.nonce, ciphertext=sealed.ciphertext), context=CONTEXT)


def test_a_damaged_wrapped_key_does_not_open(keys: KeyStore) -> None:
    box = SecretBox(MASTER, keys)
    sealed = box.seal(TOKEN, context=CONTEXT)
    wrapped = keys.get(sealed.key_id)
    assert wrapped is not None
    keys.delete(sealed.key_id)
    keys.put(sealed.key_id, flip(wrapped, len(wrapped) - 1))
    with pytest.raises(SecretUnreadable):
        box.open(sealed, context=CONTEXT)
    keys.delete(sealed.key_id)
    keys.put(sealed.key_id, wrapped[:-1])
    with pytest.raises(SecretUnreadable, match="damaged"):
        box.open(sealed, context=CONTEXT)


def test_another_master_key_does_not_open(keys: KeyStore) -> None:
    sealed = SecretBox(MASTER, keys).seal(TOKEN, context=CONTEXT)
    with pytest.raises(SecretUnreadable, match="master key"):
        SecretBox(OTHER_MASTER, keys).open(sealed, context=CONTEXT)


def test_deleting_the_key_shreds_the_secret(box: SecretBox, keys: KeyStore) -> None:
    kept, shredded = box.seal("kept", context=CONTEXT), box.seal(TOKEN, context=CONTEXT)
    copy_on_the_log = shredded.to_string()
    assert box.shred(shredded) is True
    for sealed in (shredded, copy_on_the_log):
        with pytest.raises(SecretShredded) as caught:
            box.open(sealed, context=CONTEXT)
        assert not is_retriable(caught.value)
    assert keys.delete(shredded.key_id) is False  # idempotent
    assert box.shred(copy_on_the_log) is False
    assert box.open(kept, context=CONTEXT) == "kept"  # one data key per secret


def test_a_key_id_is_written_once(keys: KeyStore) -> None:
    keys.put("a" * 32, b"first")
    with pytest.raises(FileExistsError):
        keys.put("a" * 32, b"second")
    assert keys.get("a" * 32) == b"first"


@pytest.mark.parametrize("key_id", ["../../etc/passwd", "A" * 32, "a" * 31, "a" * 33, "", ".", "a" * 31 + "/"])
def test_key_ids_that_could_escape_the_store_are_refused(keys: KeyStore, key_id: str) -> None:
    for call in (lambda: keys.get(key_id), lambda: keys.delete(key_id), lambda: keys.put(key_id, b"x")):
        with pytest.raises(SecretUnreadable):
            call()


def test_the_file_store_keeps_one_private_file_per_key(tmp_path: Path) -> None:
    directory = tmp_path / "secrets" / "keys"
    box = SecretBox(MASTER, FileKeyStore(directory))
    first, second = box.seal(TOKEN, context=CONTEXT), box.seal("other", context=CONTEXT)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(p.name for p in directory.iterdir())
    assert files == sorted([first.key_id, second.key_id])  # no temporary files left behind
    for name in files:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600

    restarted = SecretBox(MASTER, FileKeyStore(directory))  # keys outlive the process
    assert restarted.open(first, context=CONTEXT) == TOKEN
    assert restarted.shred(first) is True
    assert not (directory / first.key_id).exists()
    with pytest.raises(SecretShredded):
        box.open(first, context=CONTEXT)
    assert box.open(second, context=CONTEXT) == "other"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v1",
        "v2.{id}.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.{id}.AAAAAAAAAAAAAAAA",
        "v1.{id}.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA.x",
        "v1.{id}.AAAA.AAAAAAAAAAAAAAAAAAAAAA",  # 3-byte nonce
        "v1.{id}.AAAAAAAAAAAAAAAA.AAAA",  # shorter than a tag
        "v1.{id}.AAAAAAAAAAAAAAAA.AAAA+AAAAAAAAAAAAAAAAA",  # not base64url
        "v1.{id}.AAAAAAAAAAAAAAAA.AAAAA",  # impossible length
        "v1.../../x.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA",
        "v1.{id}.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA\n",
    ],
)
def test_malformed_sealed_strings_are_unreadable(box: SecretBox, text: str) -> None:
    text = text.replace("{id}", "ab" * 16)
    with pytest.raises(SecretUnreadable):
        SealedSecret.from_string(text)
    with pytest.raises(SecretUnreadable):
        box.open(text, context=CONTEXT)


def test_master_keys() -> None:
    encoded = generate_master_key()
    assert len(base64.b64decode(encoded, validate=True)) == 32
    assert decode_master_key(encoded) == base64.b64decode(encoded)
    assert decode_master_key(base64.urlsafe_b64encode(MASTER).decode()) == MASTER
    assert decode_master_key(f"  {base64.b64encode(MASTER).decode()}\n") == MASTER
    assert generate_master_key() != encoded
    with pytest.raises(ValueError, match="32 bytes"):
        decode_master_key(base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="not base64"):
        decode_master_key("not a key!")
    for size in (0, 16, 31, 33, 64):
        with pytest.raises(ValueError, match="32 bytes"):
            SecretBox(bytes(size), InMemoryKeyStore())


@pytest.mark.parametrize(
    ("token", "shown"),
    [
        (None, None),
        (TOKEN, "hf_****" + TOKEN[-4:]),
        ("hf_" + "a" * 30 + "WXYZ", "hf_****WXYZ"),
        ("sk-" + "b" * 40 + "1234", "****1234"),  # unknown prefix: nothing but the tail
        ("hf_short", "****"),
        ("hf_" + "c" * 15, "****"),
        ("hf_" + "c" * 16, "hf_****cccc"),
        ("", "****"),
        ("abc", "****"),
        ("hf_", "****"),
    ],
)
def test_mask(token: str | None, shown: str | None) -> None:
    assert mask(token) == shown


def test_mask_never_shows_more_than_the_prefix_and_four_characters() -> None:
    samples: list[Callable[[int], str]] = [lambda n: "hf_" + "x" * n, lambda n: "y" * n]
    for make in samples:
        for length in range(0, 80):
            token = make(length)
            shown = mask(token)
            assert shown is not None
            visible = shown.replace("****", "", 1)
            assert len(visible.removeprefix("hf_")) <= 4
            assert "*" * 5 not in shown  # a fixed mask: the token's length is not told
