"""Security primitives: password hashing, session tokens, credential encryption and secret masking.

Pure functions and small classes: no database, no web framework. Callers decide what to store; this module decides
how it is protected.

- Passwords are Argon2id at no less than OWASP's minimum (m=19456 KiB, t=2, p=1).
- Session tokens are 256 random bits; only their SHA-256 is stored, so a leaked table does not log anyone in.
- Exchange credentials are AES-256-GCM under a key ring, as `v1.<key_id>.<base64url(nonce || ciphertext || tag)>`.
  The associated data names the owner, row and field, so a ciphertext copied to another row does not decrypt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import secrets
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CredentialCipher",
    "CredentialDecryptError",
    "KeyRing",
    "KeyRingError",
    "Passwords",
    "credential_aad",
    "hash_token",
    "mask_secret",
    "new_token",
]

# --- Passwords ---------------------------------------------------------------------------------------------------

MIN_TIME_COST = 2
MIN_MEMORY_COST = 19456  # KiB
MIN_PARALLELISM = 1


def _password_bytes(password: str) -> bytes:
    # JSON allows lone surrogates ("\ud800"); strict UTF-8 would turn such a password into a 500 instead of a result.
    return password.encode("utf-8", "surrogatepass")


def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash in the encoded form, with the hasher's parameters and a random salt and digest, so verifying against it
    costs what a real verify costs. Made without hashing: it would add an Argon2 run to every start-up."""

    def b64(size: int) -> str:
        return base64.b64encode(secrets.token_bytes(size)).decode().rstrip("=")

    return (
        f"$argon2id$v={ARGON2_VERSION}$m={hasher.memory_cost},t={hasher.time_cost},p={hasher.parallelism}"
        f"${b64(hasher.salt_len)}${b64(hasher.hash_len)}"
    )


class Passwords:
    """Argon2id hashing and verification; refuses parameters below OWASP's minimum."""

    def __init__(
        self, time_cost: int = MIN_TIME_COST, memory_cost: int = MIN_MEMORY_COST, parallelism: int = MIN_PARALLELISM
    ) -> None:
        if time_cost < MIN_TIME_COST or memory_cost < MIN_MEMORY_COST or parallelism < MIN_PARALLELISM:
            raise ValueError(
                f"Argon2id parameters t={time_cost}, m={memory_cost}, p={parallelism} are below the minimum "
                f"t>={MIN_TIME_COST}, m>={MIN_MEMORY_COST} KiB, p>={MIN_PARALLELISM}"
            )
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID
        )
        self._dummy_hash = _dummy_hash(self._hasher)

    def hash(self, password: str) -> str:
        """Hash a password with a fresh random salt."""
        return self._hasher.hash(_password_bytes(password))

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches `password_hash`; False for a mismatch, a missing hash or a malformed one."""
        if password_hash is None:
            # An account without a password must not answer faster than one with a wrong password.
            self.verify_dummy(password)
            return False
        if not password_hash.isascii():
            return False
        try:
            return self._hasher.verify(password_hash, _password_bytes(password))
        except (VerificationError, InvalidHashError):  # VerifyMismatchError is a VerificationError
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with weaker parameters (or another Argon2 variant) than the current ones."""
        try:
            stored = extract_parameters(password_hash)
        except (InvalidHashError, ValueError):
            return True
        current = self._hasher
        return (
            stored.type is not Type.ID
            or stored.version < ARGON2_VERSION
            or stored.time_cost < current.time_cost
            or stored.memory_cost < current.memory_cost
            or stored.parallelism < current.parallelism
            or stored.hash_len < current.hash_len
            or stored.salt_len < current.salt_len
        )

    def verify_dummy(self, password: str) -> None:
        """Spend as long as a real verify, for a login whose account does not exist."""
        with contextlib.suppress(VerifyMismatchError):
            self._hasher.verify(self._dummy_hash, _password_bytes(password))

    async def ahash(self, password: str) -> str:
        """`hash` in a worker thread, so the event loop keeps serving other requests."""
        return await asyncio.to_thread(self.hash, password)

    async def averify(self, password_hash: str | None, password: str) -> bool:
        """`verify` in a worker thread."""
        return await asyncio.to_thread(self.verify, password_hash, password)

    async def averify_dummy(self, password: str) -> None:
        """`verify_dummy` in a worker thread."""
        await asyncio.to_thread(self.verify_dummy, password)


# --- Session tokens ----------------------------------------------------------------------------------------------


def new_token() -> str:
    """A new session token: 256 random bits, URL-safe base64."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The SHA-256 hex digest of a token: the only form that is stored."""
    # No salt or slow hash needed: the token is 256 random bits, so its hash cannot be guessed backwards.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# --- Key ring ----------------------------------------------------------------------------------------------------

KEY_BYTES = 32
_KEY_ID = re.compile(r"[a-z0-9]{1,16}")
_NUMBERED_ID = re.compile(r"k(\d+)")


class KeyRingError(ValueError):
    """A key ring, key text or key file is malformed; the message says what is wrong and never shows a key."""


def _decode_key(text: str, where: str) -> bytes:
    # Accept standard (`openssl rand -base64 32`) and URL-safe alphabets, padded or not.
    cleaned = text.strip().replace("-", "+").replace("_", "/").rstrip("=")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        key = base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise KeyRingError(f"{where}: the key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyRingError(f"{where}: the key is {len(key)} bytes; AES-256 needs {KEY_BYTES}") from None
    return key


def _encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


class KeyRing:
    """Ordered key id -> 32-byte AES key, with one primary key that new ciphertexts use. Immutable."""

    __slots__ = ("_keys", "_primary_id")

    def __init__(self, keys: Mapping[str, bytes], primary_id: str) -> None:
        if not keys:
            raise KeyRingError("a key ring needs at least one key")
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
                raise KeyRingError("key ids must be 1-16 characters of a-z and 0-9")
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise KeyRingError(f"key {key_id!r} must be exactly {KEY_BYTES} bytes")
        if primary_id not in keys:
            raise KeyRingError("the primary key id is not in the ring")
        self._keys: dict[str, bytes] = dict(keys)
        self._primary_id = primary_id

    def __repr__(self) -> str:
        # Never the key bytes: a ring ends up in logs and tracebacks.
        return f"KeyRing(primary_id={self._primary_id!r}, key_ids={list(self._keys)!r})"

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    @property
    def primary_id(self) -> str:
        return self._primary_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def key(self, key_id: str) -> bytes:
        """The key bytes for `key_id`; KeyError if the ring does not hold it."""
        return self._keys[key_id]

    @staticmethod
    def generate_key() -> bytes:
        """A new random 256-bit key."""
        return AESGCM.generate_key(bit_length=KEY_BYTES * 8)

    @classmethod
    def generate(cls, key_id: str = "k1") -> KeyRing:
        """A ring with one new random key."""
        return cls({key_id: cls.generate_key()}, key_id)

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        """Read `id1:base64key1,id2:base64key2` (first is primary); a lone key without an id is named `k1`."""
        keys: dict[str, bytes] = {}
        entries = [entry.strip() for entry in text.split(",")]
        if entries == [""]:
            raise KeyRingError("no keys given; expected id:base64key[,id:base64key...]")
        for number, entry in enumerate(entries, start=1):
            where = f"entry {number}"
            if not entry:
                raise KeyRingError(f"{where} is empty")
            key_id, sep, key_text = entry.partition(":")
            if not sep:
                # base64 has no ':', so an entry without one is a bare key.
                key_id, key_text = "k1", entry
            key_id = key_id.strip()
            if not _KEY_ID.fullmatch(key_id):
                # Not echoed: a mistyped entry may have its id and key swapped or run together.
                raise KeyRingError(f"{where}: the key id must be 1-16 characters of a-z and 0-9")
            where = f"entry {number} ({key_id!r})"
            if key_id in keys:
                hint = " (a key without an id is named 'k1')" if key_id == "k1" else ""
                raise KeyRingError(f"{where}: duplicate key id{hint}")
            keys[key_id] = _decode_key(key_text, where)
        return cls(keys, next(iter(keys)))

    def to_text(self) -> str:
        """The `parse` format, primary first."""
        ordered = [self._primary_id, *(key_id for key_id in self._keys if key_id != self._primary_id)]
        return ",".join(f"{key_id}:{_encode_key(self._keys[key_id])}" for key_id in ordered)

    @classmethod
    def load_file(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Read a key file written by `save_file`; refuses one that group or others can access."""
        try:
            return cls._load(Path(path))
        except OSError as exc:
            raise KeyRingError(f"cannot read key file {os.fspath(path)}: {exc.strerror or exc}") from None

    @classmethod
    def _load(cls, path: Path) -> KeyRing:
        with path.open("rb") as file:
            # fstat on the open file, so the mode checked is that of the file actually read.
            mode = os.fstat(file.fileno()).st_mode
            if os.name == "posix" and mode & 0o077:
                raise KeyRingError(
                    f"key file {path} has mode {oct(mode & 0o777)}; it must be private to its owner (chmod 600 {path})"
                )
            raw = file.read()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise KeyRingError(f"key file {path} is not valid JSON") from None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("primary"), str)
            or not isinstance(data.get("keys"), dict)
        ):
            raise KeyRingError(f'key file {path}: expected {{"primary": id, "keys": {{id: base64key}}}}')
        keys: dict[str, bytes] = {}
        for key_id, key_text in data["keys"].items():
            if not _KEY_ID.fullmatch(key_id):
                raise KeyRingError(f"key file {path}: key ids must be 1-16 characters of a-z and 0-9")
            if not isinstance(key_text, str):
                raise KeyRingError(f"key file {path}: key {key_id!r} must be a base64 string")
            keys[key_id] = _decode_key(key_text, f"key file {path}, key {key_id!r}")
        if data["primary"] not in keys:
            raise KeyRingError(f"key file {path}: the primary key id is not among its keys")
        return cls(keys, data["primary"])

    def save_file(self, path: str | os.PathLike[str]) -> None:
        """Write the ring as JSON, mode 0o600, replacing the file atomically."""
        _write_private(Path(path), self._to_json(), replace=True)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> KeyRing:
        """Load the key file, or create it with one new key on first run."""
        path = Path(path)
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise KeyRingError(f"cannot read key file {path}: {exc.strerror or exc}") from None
        ring = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            _write_private(path, ring._to_json(), replace=False)
        except FileExistsError:
            # Another worker created it first; everyone must use that one key, not each their own.
            return cls.load_file(path)
        return ring

    def with_new_primary(self, key_id: str | None = None) -> KeyRing:
        """A ring with a freshly generated primary key added before the existing keys, which are kept."""
        if key_id is None:
            numbers = [int(match[1]) for kid in self._keys if (match := _NUMBERED_ID.fullmatch(kid))]
            key_id = f"k{max(numbers, default=0) + 1}"
        if key_id in self._keys:
            raise KeyRingError(f"key id {key_id!r} is already in the ring")
        return KeyRing({key_id: self.generate_key(), **self._keys}, key_id)

    def without(self, key_id: str) -> KeyRing:
        """A ring with `key_id` retired; the primary cannot be retired."""
        if key_id == self._primary_id:
            raise KeyRingError(f"key {key_id!r} is the primary; rotate to a new primary before retiring it")
        if key_id not in self._keys:
            raise KeyRingError(f"key {key_id!r} is not in the ring")
        return KeyRing({kid: key for kid, key in self._keys.items() if kid != key_id}, self._primary_id)

    def _to_json(self) -> bytes:
        data = {"primary": self._primary_id, "keys": {kid: _encode_key(key) for kid, key in self._keys.items()}}
        return (json.dumps(data, indent=2) + "\n").encode("utf-8")


def _write_private(path: Path, content: bytes, *, replace: bool) -> None:
    """Write `content` to a new 0o600 temp file beside `path`, then move it into place atomically."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # Created 0o600 from the start: a chmod afterwards would leave a window in which the key is readable.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temp, path)
        else:
            # link() fails if `path` exists, so two first-run workers cannot overwrite each other's key.
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # The rename is durable only once the directory entry is; not possible (or needed) on Windows.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- Credential encryption ---------------------------------------------------------------------------------------

NONCE_BYTES = 12
TAG_BYTES = 16
_TOKEN = re.compile(r"v1\.([a-z0-9]{1,16})\.([A-Za-z0-9_-]+)")


class CredentialDecryptError(Exception):
    """A stored credential cannot be decrypted; the message never contains plaintext or key material."""


def credential_aad(user_id: uuid.UUID, row_id: uuid.UUID, field: str) -> str:
    """Associated data binding a credential ciphertext to its owner, its `user_api_keys` row and its column."""
    return f"user_api_keys:{user_id}:{row_id}:{field}"


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Refuse non-canonical spellings (stray low bits in the last character): one ciphertext, one string.
    if _b64url_encode(data) != text:
        raise ValueError("non-canonical base64")
    return data


class CredentialCipher:
    """AES-256-GCM encryption of credentials under a key ring; the primary key encrypts, any ring key decrypts."""

    def __init__(self, keyring: KeyRing, *, reload: Callable[[], KeyRing] | None = None) -> None:
        self._reload = reload
        self._use(keyring)

    @property
    def keyring(self) -> KeyRing:
        return self._ring

    def use(self, keyring: KeyRing) -> None:
        """Switch to `keyring` (a rotation: its primary key encrypts from now on), for every holder of this cipher."""
        self._use(keyring)

    def _use(self, keyring: KeyRing) -> dict[str, AESGCM]:
        aeads = {key_id: AESGCM(keyring.key(key_id)) for key_id in keyring.key_ids}
        # One assignment of a tuple: a concurrent thread sees the old ring or the new one, never half of each.
        self._state = (keyring, aeads)
        return aeads

    @property
    def _ring(self) -> KeyRing:
        return self._state[0]

    def encrypt(self, plaintext: str, *, aad: str) -> str:
        """Encrypt under the primary key with a fresh random nonce: `v1.<key_id>.<base64url(nonce||ct||tag)>`."""
        if not aad:
            raise ValueError("aad must name the credential's owner and row (see credential_aad)")
        ring, aeads = self._state
        key_id = ring.primary_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = aeads[key_id].encrypt(nonce, plaintext.encode("utf-8"), _associated_data(key_id, aad))
        return f"v1.{key_id}.{_b64url_encode(nonce + sealed)}"

    def decrypt(self, token: str, *, aad: str) -> str:
        """Decrypt a token made by `encrypt` with the same `aad`; CredentialDecryptError on any failure."""
        key_id, blob = _parse_token(token)
        aead = self._state[1].get(key_id)
        if aead is None:
            aead = self._reloaded(key_id)
        try:
            plaintext = aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _associated_data(key_id, aad))
            return plaintext.decode("utf-8")
        except (InvalidTag, UnicodeDecodeError):
            raise CredentialDecryptError(
                f"credential under key {key_id!r} failed authentication: wrong owner or row, or corrupted"
            ) from None

    def reencrypt(self, token: str, *, aad: str) -> str:
        """The same plaintext encrypted under the primary key (for rotation)."""
        return self.encrypt(self.decrypt(token, aad=aad), aad=aad)

    def key_id_of(self, token: str) -> str:
        """The id of the key a token was encrypted under."""
        return _parse_token(token)[0]

    def needs_reencrypt(self, token: str) -> bool:
        """Whether a token is under a key other than the primary."""
        return self.key_id_of(token) != self._ring.primary_id

    def _reloaded(self, key_id: str) -> AESGCM:
        """Reload the ring once for a key id it lacks (another worker may have rotated the key file)."""
        ring: KeyRing | None = None
        if self._reload is not None:
            try:
                ring = self._reload()
            except Exception as exc:
                # Chained: KeyRingError messages hold no key material, and the cause is what an operator must fix.
                raise CredentialDecryptError(f"key {key_id!r} is unknown and reloading the key ring failed") from exc
        if ring is None or key_id not in ring:
            raise CredentialDecryptError(f"credential is under key {key_id!r}, which the key ring does not hold")
        return self._use(ring)[key_id]


def _associated_data(key_id: str, aad: str) -> bytes:
    # The header is authenticated too, so relabelling a ciphertext with another key id cannot go unnoticed.
    return f"v1.{key_id}.{aad}".encode()


def _parse_token(token: str) -> tuple[str, bytes]:
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise CredentialDecryptError("not an encrypted credential (expected v1.<key_id>.<data>)")
    try:
        blob = _b64url_decode(match[2])
    except (binascii.Error, ValueError):
        raise CredentialDecryptError("encrypted credential has malformed data") from None
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise CredentialDecryptError("encrypted credential is truncated")
    return match[1], blob


# --- Display -----------------------------------------------------------------------------------------------------


def mask_secret(value: str) -> str:
    """`abcd…wxyz` for a secret of 12+ characters; a shorter one shows at most its last 2, so it is never revealed."""
    if len(value) >= 12:
        return f"{value[:4]}…{value[-4:]}"
    if len(value) >= 4:
        return f"…{value[-2:]}"
    return "…"
