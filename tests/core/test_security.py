"""Security primitives: Argon2id passwords, session tokens, AES-GCM credential encryption and key rotation, masking.

Pure unit tests: no database, no app. Timing is compared as a ratio of real to dummy verify, never against a clock.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from argon2 import PasswordHasher, Type
from hypothesis import given
from hypothesis import strategies as st

from cival.core.security import (
    CredentialCipher,
    CredentialDecryptError,
    KeyRing,
    KeyRingError,
    Passwords,
    credential_aad,
    hash_token,
    mask_secret,
    new_token,
)

POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
USER_A, USER_B = uuid.UUID(int=1), uuid.UUID(int=2)
ROW_1, ROW_2 = uuid.UUID(int=11), uuid.UUID(int=12)
AAD = credential_aad(USER_A, ROW_1, "api_secret")
SECRET = "sk-live-0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def passwords() -> Passwords:
    return Passwords()


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def same_ring(a: KeyRing, b: KeyRing) -> bool:
    return a.to_text() == b.to_text()


# --- Passwords ---------------------------------------------------------------------------------------------------


def test_hash_is_argon2id_with_owasp_parameters(passwords: Passwords) -> None:
    stored = passwords.hash("correct horse")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "correct horse" not in stored


def test_each_hash_has_its_own_salt(passwords: Passwords) -> None:
    assert passwords.hash("same") != passwords.hash("same")


@pytest.mark.parametrize(
    ("time_cost", "memory_cost", "parallelism"),
    [(1, 19456, 1), (2, 19455, 1), (2, 19456, 0), (0, 0, 0)],
)
def test_refuses_parameters_below_owasp_minimum(time_cost: int, memory_cost: int, parallelism: int) -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        Passwords(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)


def test_stronger_parameters_are_used() -> None:
    stored = Passwords(time_cost=3, memory_cost=20480, parallelism=2).hash("pw")
    assert stored.startswith("$argon2id$v=19$m=20480,t=3,p=2$")


def test_verify_accepts_the_right_password_only(passwords: Passwords) -> None:
    stored = passwords.hash("correct horse")
    assert passwords.verify(stored, "correct horse") is True
    assert passwords.verify(stored, "correct horsE") is False
    assert passwords.verify(stored, "") is False


@pytest.mark.parametrize("stored", [None, "", "not-a-hash", "$2b$12$abcdefghijklmnopqrstuv", "$argon2id$v=19$m=1", "é"])
def test_verify_is_false_for_missing_or_malformed_hash(passwords: Passwords, stored: str | None) -> None:
    assert passwords.verify(stored, "anything") is False


def test_password_with_lone_surrogate_hashes_and_verifies(passwords: Passwords) -> None:
    # JSON can carry "\ud800"; it must give an answer, not an encoding error.
    stored = passwords.hash("pw\ud800")
    assert passwords.verify(stored, "pw\ud800") is True
    assert passwords.verify(stored, "pw") is False


def test_needs_rehash_when_parameters_rise(passwords: Passwords) -> None:
    stored = passwords.hash("pw")
    assert passwords.needs_rehash(stored) is False
    assert Passwords(time_cost=3).needs_rehash(stored) is True
    assert Passwords(memory_cost=65536).needs_rehash(stored) is True
    assert Passwords(parallelism=2).needs_rehash(stored) is True


def test_no_rehash_down_to_weaker_parameters(passwords: Passwords) -> None:
    stronger = Passwords(time_cost=3).hash("pw")
    assert passwords.needs_rehash(stronger) is False
    assert passwords.verify(stronger, "pw") is True


def test_needs_rehash_for_another_argon2_variant(passwords: Passwords) -> None:
    argon2i = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, type=Type.I).hash("pw")
    assert passwords.needs_rehash(argon2i) is True
    assert passwords.needs_rehash("garbage") is True


def test_dummy_verify_takes_as_long_as_a_real_one(passwords: Passwords) -> None:
    stored = passwords.hash("the real password")
    real: list[float] = []
    dummy: list[float] = []
    for _ in range(5):
        # CPU time of this process, interleaved: other processes on the machine do not distort the ratio.
        start = time.process_time()
        assert passwords.verify(stored, "a wrong guess") is False
        real.append(time.process_time() - start)
        start = time.process_time()
        passwords.verify_dummy("a wrong guess")
        dummy.append(time.process_time() - start)
    ratio = statistics.median(dummy) / statistics.median(real)
    assert 0.5 <= ratio <= 2, f"dummy/real verify time ratio {ratio:.2f}"


def test_missing_hash_takes_as_long_as_a_wrong_password(passwords: Passwords) -> None:
    stored = passwords.hash("the real password")
    real: list[float] = []
    missing: list[float] = []
    for _ in range(5):
        start = time.process_time()
        passwords.verify(stored, "guess")
        real.append(time.process_time() - start)
        start = time.process_time()
        passwords.verify(None, "guess")
        missing.append(time.process_time() - start)
    ratio = statistics.median(missing) / statistics.median(real)
    assert 0.5 <= ratio <= 2, f"missing/real verify time ratio {ratio:.2f}"


def _record_thread(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Wrap Passwords.<name> to record which thread runs it."""
    threads: list[int] = []
    original: Callable[..., object] = getattr(Passwords, name)

    def wrapper(self: Passwords, *args: object) -> object:
        threads.append(threading.get_ident())
        return original(self, *args)

    monkeypatch.setattr(Passwords, name, wrapper)
    return threads


async def test_async_variants_run_off_the_event_loop_thread(
    passwords: Passwords, monkeypatch: pytest.MonkeyPatch
) -> None:
    hash_threads = _record_thread(monkeypatch, "hash")
    verify_threads = _record_thread(monkeypatch, "verify")
    dummy_threads = _record_thread(monkeypatch, "verify_dummy")

    stored = await passwords.ahash("pw")
    assert await passwords.averify(stored, "pw") is True
    assert await passwords.averify(stored, "nope") is False
    await passwords.averify_dummy("pw")

    loop_thread = threading.get_ident()
    assert hash_threads
    assert verify_threads
    assert dummy_threads
    assert loop_thread not in hash_threads + verify_threads + dummy_threads


# --- Session tokens ----------------------------------------------------------------------------------------------


def test_new_token_carries_256_random_bits() -> None:
    token = new_token()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert len({new_token() for _ in range(1000)}) == 1000


def test_hash_token_is_sha256_hex_and_not_the_token() -> None:
    token = new_token()
    digest = hash_token(token)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert digest == hash_token(token)
    assert token not in digest
    assert hash_token(new_token()) != digest


# --- Credential encryption ---------------------------------------------------------------------------------------


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate()


@pytest.fixture
def cipher(ring: KeyRing) -> CredentialCipher:
    return CredentialCipher(ring)


def decoded(token: str) -> bytes:
    data = token.split(".")[2]
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def with_data(token: str, data: bytes) -> str:
    version, key_id, _ = token.split(".")
    return f"{version}.{key_id}.{base64.urlsafe_b64encode(data).rstrip(b'=').decode()}"


def test_round_trip(cipher: CredentialCipher) -> None:
    token = cipher.encrypt(SECRET, aad=AAD)
    assert re.fullmatch(r"v1\.k1\.[A-Za-z0-9_-]+", token)
    assert SECRET not in token
    assert cipher.decrypt(token, aad=AAD) == SECRET
    assert cipher.key_id_of(token) == "k1"
    assert cipher.needs_reencrypt(token) is False


def test_fresh_nonce_per_encryption(cipher: CredentialCipher) -> None:
    first, second = cipher.encrypt(SECRET, aad=AAD), cipher.encrypt(SECRET, aad=AAD)
    assert first != second
    assert decoded(first)[:12] != decoded(second)[:12]
    # nonce (12) + plaintext + tag (16)
    assert len(decoded(first)) == 12 + len(SECRET.encode()) + 16


def test_empty_plaintext_round_trips(cipher: CredentialCipher) -> None:
    assert cipher.decrypt(cipher.encrypt("", aad=AAD), aad=AAD) == ""


def test_encrypt_refuses_empty_aad(cipher: CredentialCipher) -> None:
    with pytest.raises(ValueError, match="aad"):
        cipher.encrypt(SECRET, aad="")


def test_credential_aad_names_table_user_row_and_field() -> None:
    assert credential_aad(USER_A, ROW_1, "api_key") == f"user_api_keys:{USER_A}:{ROW_1}:api_key"


@pytest.mark.parametrize("position", [0, 11, 12, -17, -1], ids=["nonce0", "nonce11", "ct0", "tag0", "tag15"])
def test_flipped_byte_is_detected(cipher: CredentialCipher, position: int) -> None:
    token = cipher.encrypt(SECRET, aad=AAD)
    data = bytearray(decoded(token))
    data[position] ^= 0x01
    with pytest.raises(CredentialDecryptError):
        cipher.decrypt(with_data(token, bytes(data)), aad=AAD)


def test_relabelled_key_id_is_detected(ring: KeyRing) -> None:
    # Both keys identical: only the authenticated header can notice the relabelling.
    key = ring.key("k1")
    twin = KeyRing({"k1": key, "k2": key}, "k1")
    cipher = CredentialCipher(twin)
    token = cipher.encrypt(SECRET, aad=AAD)
    with pytest.raises(CredentialDecryptError):
        cipher.decrypt(token.replace("v1.k1.", "v1.k2.", 1), aad=AAD)


def test_unknown_key_id_is_refused(cipher: CredentialCipher) -> None:
    token = cipher.encrypt(SECRET, aad=AAD)
    with pytest.raises(CredentialDecryptError, match="'k9'"):
        cipher.decrypt(token.replace("v1.k1.", "v1.k9.", 1), aad=AAD)


def test_truncated_token_is_refused(cipher: CredentialCipher) -> None:
    token = cipher.encrypt(SECRET, aad=AAD)
    data = decoded(token)
    for bad in (token[:-1], with_data(token, data[:-1])):
        with pytest.raises(CredentialDecryptError):
            cipher.decrypt(bad, aad=AAD)
    # Shorter than nonce + tag: refused before any decryption is attempted.
    for bad in (with_data(token, data[:27]), with_data(token, data[:12])):
        with pytest.raises(CredentialDecryptError, match="truncated"):
            cipher.decrypt(bad, aad=AAD)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "v1",
        "v1.k1",
        "v1.k1.",
        "v2.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "v1..AAAA",
        "v1.K1.AAAA",
        "v1.k1.AA=A",
    ],
)
def test_malformed_token_is_refused(cipher: CredentialCipher, token: str) -> None:
    with pytest.raises(CredentialDecryptError):
        cipher.decrypt(token, aad=AAD)
    with pytest.raises(CredentialDecryptError):
        cipher.key_id_of(token)


def test_non_canonical_base64_is_refused(cipher: CredentialCipher) -> None:
    token = cipher.encrypt("x", aad=AAD)  # 29 bytes: the last base64 character carries 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    sloppy = token[:-1] + alphabet[last | 0b0001]
    assert sloppy != token
    assert decoded(sloppy) == decoded(token)
    with pytest.raises(CredentialDecryptError):
        cipher.decrypt(sloppy, aad=AAD)


@pytest.mark.parametrize(
    "other_aad",
    [
        credential_aad(USER_A, ROW_2, "api_secret"),
        credential_aad(USER_B, ROW_1, "api_secret"),
        credential_aad(USER_A, ROW_1, "api_key"),
    ],
    ids=["other-row", "other-user", "other-field"],
)
def test_ciphertext_moved_elsewhere_does_not_decrypt(cipher: CredentialCipher, other_aad: str) -> None:
    token = cipher.encrypt(SECRET, aad=AAD)
    with pytest.raises(CredentialDecryptError) as caught:
        cipher.decrypt(token, aad=other_aad)
    assert SECRET not in str(caught.value)


def test_decrypt_error_reveals_neither_plaintext_nor_key(ring: KeyRing) -> None:
    cipher = CredentialCipher(ring)
    token = cipher.encrypt(SECRET, aad=AAD)
    with pytest.raises(CredentialDecryptError) as caught:
        cipher.decrypt(token, aad="user_api_keys:someone-else")
    message = str(caught.value)
    assert SECRET not in message
    assert b64(ring.key("k1")) not in message
    assert ring.key("k1").hex() not in message


def test_rotation_keeps_old_ciphertexts_readable_until_retired(ring: KeyRing) -> None:
    old_token = CredentialCipher(ring).encrypt(SECRET, aad=AAD)

    rotated = ring.with_new_primary()
    assert rotated.primary_id == "k2"
    assert rotated.key_ids == ("k2", "k1")
    assert rotated.key("k1") == ring.key("k1")
    assert rotated.key("k2") != ring.key("k1")
    assert ring.key_ids == ("k1",)  # the original ring is unchanged

    cipher = CredentialCipher(rotated)
    assert cipher.decrypt(old_token, aad=AAD) == SECRET
    assert cipher.needs_reencrypt(old_token) is True

    new_token_ = cipher.reencrypt(old_token, aad=AAD)
    assert cipher.key_id_of(new_token_) == "k2"
    assert cipher.needs_reencrypt(new_token_) is False
    assert cipher.key_id_of(cipher.encrypt(SECRET, aad=AAD)) == "k2"

    retired = CredentialCipher(rotated.without("k1"))
    assert retired.decrypt(new_token_, aad=AAD) == SECRET
    with pytest.raises(CredentialDecryptError):
        retired.decrypt(old_token, aad=AAD)


def test_rotation_ids_keep_counting(ring: KeyRing) -> None:
    third = ring.with_new_primary().with_new_primary()
    assert third.key_ids == ("k3", "k2", "k1")
    assert third.without("k1").with_new_primary().primary_id == "k4"
    assert ring.with_new_primary("prod2025").primary_id == "prod2025"
    with pytest.raises(KeyRingError, match="already"):
        ring.with_new_primary("k1")


def test_primary_cannot_be_retired(ring: KeyRing) -> None:
    with pytest.raises(KeyRingError, match="primary"):
        ring.without("k1")
    with pytest.raises(KeyRingError, match="not in the ring"):
        ring.with_new_primary().without("k7")


def test_reload_hook_picks_up_a_rotated_key_file(tmp_path: Path, ring: KeyRing) -> None:
    key_file = tmp_path / "keys.json"
    ring.save_file(key_file)
    calls: list[int] = []

    def reload() -> KeyRing:
        calls.append(1)
        return KeyRing.load_file(key_file)

    worker = CredentialCipher(ring, reload=reload)
    assert worker.decrypt(worker.encrypt(SECRET, aad=AAD), aad=AAD) == SECRET
    assert calls == []  # known keys never trigger a reload

    # Another process rotates the key file and writes a credential under the new key.
    rotated = ring.with_new_primary()
    rotated.save_file(key_file)
    fresh = CredentialCipher(rotated).encrypt(SECRET, aad=AAD)

    assert worker.decrypt(fresh, aad=AAD) == SECRET
    assert calls == [1]
    assert worker.keyring.primary_id == "k2"
    assert worker.key_id_of(worker.encrypt(SECRET, aad=AAD)) == "k2"
    assert worker.decrypt(fresh, aad=AAD) == SECRET
    assert calls == [1]


def test_reload_that_does_not_know_the_key_keeps_the_ring(ring: KeyRing) -> None:
    calls: list[int] = []

    def reload() -> KeyRing:
        calls.append(1)
        return KeyRing.generate()

    worker = CredentialCipher(ring, reload=reload)
    foreign = CredentialCipher(KeyRing.generate("k9")).encrypt(SECRET, aad=AAD)
    with pytest.raises(CredentialDecryptError, match="'k9'"):
        worker.decrypt(foreign, aad=AAD)
    assert calls == [1]
    assert worker.keyring is ring


def test_reload_failure_becomes_a_decrypt_error(ring: KeyRing, tmp_path: Path) -> None:
    worker = CredentialCipher(ring, reload=lambda: KeyRing.load_file(tmp_path / "missing.json"))
    foreign = CredentialCipher(KeyRing.generate("k9")).encrypt(SECRET, aad=AAD)
    with pytest.raises(CredentialDecryptError, match="reloading") as caught:
        worker.decrypt(foreign, aad=AAD)
    assert isinstance(caught.value.__cause__, KeyRingError)


# Module-level: Hypothesis runs a test many times, and function-scoped fixtures are not reset between its runs.
PROPERTY_CIPHER = CredentialCipher(KeyRing.generate())


@given(plaintext=st.text(), field=st.text(min_size=1))
def test_property_round_trip_for_any_text(plaintext: str, field: str) -> None:
    aad = credential_aad(USER_A, ROW_1, field)
    token = PROPERTY_CIPHER.encrypt(plaintext, aad=aad)
    assert PROPERTY_CIPHER.decrypt(token, aad=aad) == plaintext


@given(plaintext=st.text(), field=st.text(min_size=1), other=st.text(min_size=1))
def test_property_other_aad_never_decrypts(plaintext: str, field: str, other: str) -> None:
    token = PROPERTY_CIPHER.encrypt(plaintext, aad=credential_aad(USER_A, ROW_1, field))
    if other != field:
        with pytest.raises(CredentialDecryptError):
            PROPERTY_CIPHER.decrypt(token, aad=credential_aad(USER_A, ROW_1, other))


# --- Key ring parsing --------------------------------------------------------------------------------------------


def test_parse_first_entry_is_primary() -> None:
    one, two = KeyRing.generate_key(), KeyRing.generate_key()
    ring = KeyRing.parse(f"new:{b64(two)}, old:{b64(one)}\n")
    assert ring.primary_id == "new"
    assert ring.key_ids == ("new", "old")
    assert ring.key("new") == two
    assert ring.key("old") == one


def test_parse_bare_key_is_k1() -> None:
    key = KeyRing.generate_key()
    ring = KeyRing.parse(b64(key))
    assert ring.primary_id == "k1"
    assert ring.key("k1") == key


def test_parse_accepts_urlsafe_and_unpadded_base64() -> None:
    key = bytes(range(200, 232))  # bytes whose base64 uses '+' and '/'
    standard = b64(key)
    assert "+" in standard or "/" in standard
    urlsafe = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert KeyRing.parse(f"a:{urlsafe}").key("a") == key


def test_to_text_round_trips_with_primary_first(ring: KeyRing) -> None:
    rotated = ring.with_new_primary()
    again = KeyRing.parse(rotated.to_text())
    assert same_ring(again, rotated)
    assert again.primary_id == "k2"
    assert not same_ring(KeyRing.generate(), ring)


def test_generate_key_is_32_random_bytes() -> None:
    keys = {KeyRing.generate_key() for _ in range(10)}
    assert len(keys) == 10
    assert all(len(key) == 32 for key in keys)


def test_repr_shows_no_key_material(ring: KeyRing) -> None:
    text = repr(ring)
    assert "k1" in text
    assert b64(ring.key("k1")) not in text
    assert repr(ring.key("k1")) not in text


SHORT_KEY = b64(b"sixteen byte key")
LONG_KEY = b64(bytes(range(33)))
GOOD_KEY = b64(bytes(range(100, 132)))
BAD_B64 = "Zm9vYmFy!!notbase64!!Zm9vYmFyZm9vYmFyZm9vYmFy"


@pytest.mark.parametrize(
    ("text", "secret", "message"),
    [
        ("", None, "no keys"),
        ("   ", None, "no keys"),
        (f"k1:{SHORT_KEY}", SHORT_KEY, "16 bytes"),
        (f"k1:{LONG_KEY}", LONG_KEY, "33 bytes"),
        (f"k1:{BAD_B64}", BAD_B64, "not valid base64"),
        (f"a:{GOOD_KEY},a:{GOOD_KEY}", GOOD_KEY, "duplicate"),
        (f"{GOOD_KEY},{GOOD_KEY}", GOOD_KEY, "duplicate"),
        (f"PROD:{GOOD_KEY}", GOOD_KEY, "key id"),
        (f"waytoolongforakeyid:{GOOD_KEY}", GOOD_KEY, "key id"),
        (f":{GOOD_KEY}", GOOD_KEY, "key id"),
        (f"k1:{GOOD_KEY},", GOOD_KEY, "empty"),
        (f"{GOOD_KEY}:k1", GOOD_KEY, "key id"),  # id and key swapped
    ],
)
def test_parse_errors_say_what_is_wrong_without_key_material(text: str, secret: str | None, message: str) -> None:
    with pytest.raises(KeyRingError, match=message) as caught:
        KeyRing.parse(text)
    assert isinstance(caught.value, ValueError)
    if secret is not None:
        shown = str(caught.value)
        # No run of 8+ characters from the key text appears in the message.
        assert not any(secret[i : i + 8] in shown for i in range(len(secret) - 7)), shown


def test_constructor_validates_keys() -> None:
    with pytest.raises(KeyRingError, match="32 bytes"):
        KeyRing({"k1": b"short"}, "k1")
    with pytest.raises(KeyRingError, match="primary"):
        KeyRing({"k1": KeyRing.generate_key()}, "k2")
    with pytest.raises(KeyRingError, match="at least one"):
        KeyRing({}, "k1")
    with pytest.raises(KeyRingError, match="key ids"):
        KeyRing({"K 1": KeyRing.generate_key()}, "K 1")


# --- Key files ---------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path: Path, ring: KeyRing) -> None:
    rotated = ring.with_new_primary()
    path = tmp_path / "keys.json"
    rotated.save_file(path)
    loaded = KeyRing.load_file(path)
    assert same_ring(loaded, rotated)
    assert loaded.key_ids == ("k2", "k1")
    assert os.listdir(tmp_path) == ["keys.json"]  # no temp file left behind


@POSIX_ONLY
def test_saved_key_file_is_private(tmp_path: Path, ring: KeyRing) -> None:
    path = tmp_path / "keys.json"
    ring.save_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    # Overwriting an existing file that was private keeps it private.
    ring.with_new_primary().save_file(path)
    assert path.stat().st_mode & 0o777 == 0o600


@POSIX_ONLY
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_key_file_open_to_others_is_refused(tmp_path: Path, ring: KeyRing, mode: int) -> None:
    path = tmp_path / "keys.json"
    ring.save_file(path)
    path.chmod(mode)
    with pytest.raises(KeyRingError, match=oct(mode)) as caught:
        KeyRing.load_file(path)
    assert b64(ring.key("k1")) not in str(caught.value)
    path.chmod(0o600)
    assert same_ring(KeyRing.load_file(path), ring)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected"),
        ('{"primary": "k1"}', "expected"),
        ('{"primary": "k1", "keys": {}}', "primary"),
        ('{"primary": "k1", "keys": {"k1": 5}}', "base64 string"),
        ('{"primary": "k1", "keys": {"K1": "AAAA"}}', "key ids"),
        ('{"primary": "k1", "keys": {"k1": "c2l4dGVlbiBieXRlIGtleQ=="}}', "16 bytes"),
    ],
)
def test_malformed_key_file_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyRingError, match=message) as caught:
        KeyRing.load_file(path)
    assert "c2l4dGVlbiBieXRlIGtleQ" not in str(caught.value)


def test_missing_key_file_is_a_key_ring_error(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="cannot read key file"):
        KeyRing.load_file(tmp_path / "absent.json")


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys.json"
    created = KeyRing.load_or_create(path)
    assert created.key_ids == ("k1",)
    assert path.exists()
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o600
    assert same_ring(KeyRing.load_or_create(path), created)
    assert same_ring(KeyRing.load_file(path), created)


def test_load_or_create_loses_a_first_run_race_gracefully(
    tmp_path: Path, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.json"
    generate = KeyRing.generate

    def other_worker_wins(key_id: str = "k1") -> KeyRing:
        # Another worker saves its ring after we found no file but before we write ours.
        ring.save_file(path)
        return generate(key_id)

    monkeypatch.setattr(KeyRing, "generate", other_worker_wins)
    assert same_ring(KeyRing.load_or_create(path), ring)
    assert same_ring(KeyRing.load_file(path), ring)
    assert os.listdir(tmp_path) == ["keys.json"]


def test_load_or_create_never_replaces_an_existing_ring(tmp_path: Path, ring: KeyRing) -> None:
    path = tmp_path / "keys.json"
    ring.save_file(path)
    assert same_ring(KeyRing.load_or_create(path), ring)


@POSIX_ONLY
def test_load_or_create_refuses_an_exposed_file(tmp_path: Path, ring: KeyRing) -> None:
    path = tmp_path / "keys.json"
    ring.save_file(path)
    path.chmod(0o644)
    with pytest.raises(KeyRingError, match="0o644"):
        KeyRing.load_or_create(path)
    path.chmod(0o600)
    assert same_ring(KeyRing.load_file(path), ring)  # refused, not replaced by a new ring


# --- Masking -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("abcdefghijklmnopqrstuvwxyz", "abcd…wxyz"),
        ("abcdefghijkl", "abcd…ijkl"),
        ("abcdefghijk", "…jk"),
        ("abcd", "…cd"),
        ("abc", "…"),
        ("a", "…"),
        ("", "…"),
    ],
)
def test_mask_secret(value: str, masked: str) -> None:
    assert mask_secret(value) == masked


@given(st.text())
def test_mask_secret_never_reveals_the_whole_value(value: str) -> None:
    masked = mask_secret(value)
    assert "…" in masked
    revealed = len(masked) - 1
    assert revealed < len(value) or not value
    assert revealed <= 8
