"""Envelope encryption for secrets that travel in events (HF tokens): DESIGN.md, "Artifacts".

Each secret gets its own random data key (AES-256-GCM, AAD = the caller's context, e.g.
"adapter:ws/name:hf_token"). The data key is wrapped with the master key (`LORAPLANE_SECRET_KEY`,
32 bytes in base64) and kept in a `KeyStore`, apart from the ciphertext: the sealed string may stay
on the event log forever, and deleting its key from the store shreds it (`SecretShredded`).

A deleted key file may linger on disk (journals, SSD wear levelling); it is itself encrypted with
the master key, so shredding holds as long as the master key is not also leaked with the disk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infra.errors import LoraplaneError
from infra.settings import Settings

MASTER_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_FORMAT = "v1"
_KEY_ID = re.compile(r"^[0-9a-f]{32}$")
# A stored wrapped key: version byte, nonce, then the data key encrypted under the master key with
# the key id as AAD, so a wrapped key copied under another id does not open.
_WRAP_VERSION = b"\x01"
_WRAP_AAD = b"loraplane.data-key.v1:"
_WRAPPED_BYTES = len(_WRAP_VERSION) + _NONCE_BYTES + MASTER_KEY_BYTES + _TAG_BYTES


class SecretError(LoraplaneError):
    """A sealed secret cannot be opened; trying again will not help."""


class SecretShredded(SecretError):
    """The secret's data key was deleted: the secret is gone for good."""


class SecretUnreadable(SecretError):
    """Malformed, altered, sealed for another context, or under another master key."""


class KeyStore(Protocol):
    """Where wrapped data keys live, one per key id. Write once; `delete` shreds."""

    def put(self, key_id: str, wrapped_key: bytes) -> None: ...

    def get(self, key_id: str) -> bytes | None: ...

    def delete(self, key_id: str) -> bool: ...


def _check_key_id(key_id: str) -> str:
    if not _KEY_ID.match(key_id):
        raise SecretUnreadable("a secret key id is 32 lowercase hex digits")
    return key_id


class InMemoryKeyStore:
    """For tests and one-process tools: every key is gone when the process ends."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, key_id: str, wrapped_key: bytes) -> None:
        with self._lock:
            if _check_key_id(key_id) in self._keys:
                raise FileExistsError(f"secret key {key_id} exists already")
            self._keys[key_id] = bytes(wrapped_key)

    def get(self, key_id: str) -> bytes | None:
        with self._lock:
            return self._keys.get(_check_key_id(key_id))

    def delete(self, key_id: str) -> bool:
        with self._lock:
            return self._keys.pop(_check_key_id(key_id), None) is not None

    def __len__(self) -> int:
        return len(self._keys)


class FileKeyStore:
    """One 0600 file per key id in a 0700 directory; files appear whole (written aside, then linked)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, key_id: str) -> Path:
        return self.directory / _check_key_id(key_id)

    def put(self, key_id: str, wrapped_key: bytes) -> None:
        final = self._path(key_id)
        temp = self.directory / f".{key_id}.{os.urandom(4).hex()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(wrapped_key)
                file.flush()
                os.fsync(file.fileno())
            os.link(temp, final)  # FileExistsError when the id is taken: write once
        finally:
            temp.unlink(missing_ok=True)
        self._sync_directory()

    def get(self, key_id: str) -> bytes | None:
        try:
            return self._path(key_id).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key_id: str) -> bool:
        try:
            self._path(key_id).unlink()
        except FileNotFoundError:
            return False
        self._sync_directory()
        return True

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise SecretUnreadable("a sealed secret is not in the v1.<key_id>.<nonce>.<ciphertext> form")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SecretUnreadable("a sealed secret is not in the v1.<key_id>.<nonce>.<ciphertext> form") from None


@dataclass(frozen=True, repr=False)
class SealedSecret:
    """What goes in an event: the ciphertext and the id of its data key (the key itself is not here)."""

    key_id: str
    nonce: bytes
    ciphertext: bytes

    def to_string(self) -> str:
        return f"{_FORMAT}.{self.key_id}.{_b64(self.nonce)}.{_b64(self.ciphertext)}"

    @classmethod
    def from_string(cls, text: str) -> SealedSecret:
        parts = text.split(".")
        if len(parts) != 4 or parts[0] != _FORMAT:
            raise SecretUnreadable("a sealed secret is not in the v1.<key_id>.<nonce>.<ciphertext> form")
        nonce, ciphertext = _unb64(parts[2]), _unb64(parts[3])
        if len(nonce) != _NONCE_BYTES or len(ciphertext) < _TAG_BYTES:
            raise SecretUnreadable("a sealed secret is truncated")
        return cls(key_id=_check_key_id(parts[1]), nonce=nonce, ciphertext=ciphertext)

    def __str__(self) -> str:
        return self.to_string()

    def __repr__(self) -> str:
        return f"SealedSecret(key_id={self.key_id!r}, ciphertext={len(self.ciphertext)} bytes)"


class SecretBox:
    """Seals and opens secrets under one master key, keeping each secret's data key in `keys`."""

    __slots__ = ("_derive", "_keys", "_master")

    def __init__(self, master_key: bytes, keys: KeyStore) -> None:
        if len(master_key) != MASTER_KEY_BYTES:
            raise ValueError(f"the master key must be {MASTER_KEY_BYTES} bytes, not {len(master_key)}")
        self._master = AESGCM(master_key)
        self._keys = keys
        # A key of its own for derived values, so nothing derived ever equals a use of the master key itself.
        self._derive = hmac.new(master_key, b"loraplane:derive", hashlib.sha256).digest()

    def derive(self, purpose: str) -> str:
        """A secret every process holding the master key derives alike (hex, 256 bits): e.g. the API key of one of
        the platform's own processes, which needs no storage. Different purposes give unrelated values."""
        return hmac.new(self._derive, _context(purpose), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return f"SecretBox(keys={type(self._keys).__name__})"

    def seal(self, plaintext: str, *, context: str) -> SealedSecret:
        aad = _context(context)
        data_key = AESGCM.generate_key(bit_length=256)
        key_id = os.urandom(16).hex()
        nonce = os.urandom(_NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext.encode("utf-8"), aad)
        wrap_nonce = os.urandom(_NONCE_BYTES)
        wrapped = self._master.encrypt(wrap_nonce, data_key, _WRAP_AAD + key_id.encode("ascii"))
        self._keys.put(key_id, _WRAP_VERSION + wrap_nonce + wrapped)
        return SealedSecret(key_id=key_id, nonce=nonce, ciphertext=ciphertext)

    def open(self, sealed: SealedSecret | str, *, context: str) -> str:
        if isinstance(sealed, str):
            sealed = SealedSecret.from_string(sealed)
        aad = _context(context)
        stored = self._keys.get(sealed.key_id)
        if stored is None:
            raise SecretShredded(f"secret key {sealed.key_id} was deleted: the secret is gone")
        if len(stored) != _WRAPPED_BYTES or not stored.startswith(_WRAP_VERSION):
            raise SecretUnreadable(f"secret key {sealed.key_id} is damaged")
        wrap_nonce, wrapped = stored[1 : 1 + _NONCE_BYTES], stored[1 + _NONCE_BYTES :]
        try:
            data_key = self._master.decrypt(wrap_nonce, wrapped, _WRAP_AAD + sealed.key_id.encode("ascii"))
        except InvalidTag:
            raise SecretUnreadable(f"secret key {sealed.key_id} does not open with this master key") from None
        try:
            plaintext = AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag:
            raise SecretUnreadable("the secret was altered or sealed for another context") from None
        return plaintext.decode("utf-8")

    def shred(self, sealed: SealedSecret | str) -> bool:
        """Delete the secret's data key; True if it was there. Every copy of the secret is unreadable after."""
        key_id = sealed.key_id if isinstance(sealed, SealedSecret) else SealedSecret.from_string(sealed).key_id
        return self._keys.delete(key_id)


def _context(context: str) -> bytes:
    if not context:
        raise ValueError("a secret needs a context (what it belongs to, e.g. 'adapter:ws/name:hf_token')")
    return context.encode("utf-8")


def generate_master_key() -> str:
    """A new master key for `LORAPLANE_SECRET_KEY` (standard base64 of 32 random bytes)."""
    return base64.b64encode(os.urandom(MASTER_KEY_BYTES)).decode("ascii")


def decode_master_key(encoded: str) -> bytes:
    """The master key from its setting (standard or URL-safe base64); ValueError names what is wrong."""
    text = encoded.strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("LORAPLANE_SECRET_KEY is not base64 (make one with `loraplane secrets init`)") from None
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError(f"LORAPLANE_SECRET_KEY must decode to {MASTER_KEY_BYTES} bytes, not {len(key)}")
    return key


# Prefixes that say what a token is and nothing about its secret part; kept visible by `mask`.
KNOWN_TOKEN_PREFIXES: tuple[str, ...] = ("hf_",)
_MASK = "****"
# Below this many secret characters, showing the last 4 would give away too large a share.
_MIN_SECRET_TO_SHOW_TAIL = 16


def mask(token: str | None) -> str | None:
    """`hf_****AbCd`: the known prefix and at most the last 4 characters; `****` for short strings."""
    if token is None:
        return None
    prefix = next((p for p in KNOWN_TOKEN_PREFIXES if token.startswith(p)), "")
    secret = token[len(prefix) :]
    if len(secret) < _MIN_SECRET_TO_SHOW_TAIL:
        return _MASK
    return f"{prefix}{_MASK}{secret[-4:]}"


MASTER_KEY_FILE = "secret.key"


def open_secret_box(settings: Settings) -> SecretBox:
    """The box every process of one deployment shares: `LORAPLANE_SECRET_KEY` if set, else a master key
    kept in data_dir (made on first use, readable by its owner only), with data keys under
    `settings.secret_keys_path`."""
    if settings.secret_key is not None:
        master = decode_master_key(settings.secret_key.get_secret_value())
    else:
        master = decode_master_key(_local_master_key(settings.data_dir / MASTER_KEY_FILE))
    return SecretBox(master, FileKeyStore(settings.secret_keys_path))


def _local_master_key(path: Path) -> str:
    """Read the key file, or make it: written whole under another name, then linked into place, so a
    process starting at the same moment reads either nothing (and links its own, which fails) or all of it."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(generate_master_key())
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(draft, path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    finally:
        draft.unlink()
    return path.read_text().strip()
