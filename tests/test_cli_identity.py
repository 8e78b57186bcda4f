"""The identity commands of `cival`: `user demo`, `user create` and `keys rotate`, on an embedded SQLite data dir."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from cival.core.security import Passwords

CIVAL = [sys.executable, "-m", "cival"]


def run(
    args: list[str], env: dict[str, str], cwd: Path, *, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")} | env
    return subprocess.run(  # noqa: S603 - our own CLI and interpreter
        args, env=full_env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def cival(
    args: list[str], env: dict[str, str], cwd: Path, *, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return run([*CIVAL, *args], env, cwd, stdin=stdin)


def query(data_dir: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(data_dir / "cival.sqlite3") as conn:
        return conn.execute(sql, params).fetchall()


def _env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    data_dir = tmp_path / "data"
    return data_dir, {"CIVAL_DATA_DIR": str(data_dir), "CIVAL_LOG_JSON": "false"}


def test_user_demo_prints_the_login_and_is_idempotent(tmp_path: Path) -> None:
    data_dir, env = _env(tmp_path)
    first = cival(["user", "demo"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    match = re.search(r"Demo trader created: demo@cival\.dev / (\S+)", first.stdout)
    assert match, first.stdout
    password = match[1]
    assert "/api/v1/auth/login" in first.stdout

    second = cival(["user", "demo"], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"Demo trader ready: demo@cival.dev / {password}" in second.stdout

    users = query(data_dir, "SELECT id, role, password_hash FROM users WHERE email = ?", "demo@cival.dev")
    assert len(users) == 1
    user_id, role, password_hash = users[0]
    assert role == "trader"
    assert Passwords().verify(str(password_hash), password)
    accounts = query(data_dir, "SELECT id, exchange, account_id FROM trading_accounts WHERE user_id = ?", user_id)
    assert [(a[1], a[2]) for a in accounts] == [("paper", "demo")]
    assert len(query(data_dir, "SELECT id FROM balances WHERE account_id = ?", accounts[0][0])) == 1
    login_file = data_dir / "demo-login.txt"
    assert login_file.read_text().strip() == password
    assert login_file.stat().st_mode & 0o077 == 0


def test_user_create_admin_reads_the_password_from_stdin(tmp_path: Path) -> None:
    data_dir, env = _env(tmp_path)
    password = "an admin's long password"
    result = cival(
        ["user", "create", " Root.Admin@Example.COM", "--admin", "--full-name", "Root"],
        env,
        tmp_path,
        stdin=password + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert "created admin root.admin@example.com" in result.stdout
    assert password not in result.stdout + result.stderr
    rows = query(
        data_dir,
        "SELECT role, full_name, password_hash, is_active FROM users WHERE email = ?",
        "root.admin@example.com",
    )
    assert len(rows) == 1
    role, full_name, password_hash, is_active = rows[0]
    assert (role, full_name, bool(is_active)) == ("admin", "Root", True)
    assert str(password_hash).startswith("$argon2id$")
    assert Passwords().verify(str(password_hash), password)

    again = cival(["user", "create", "root.admin@example.com"], env, tmp_path, stdin=password + "\n")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_user_create_refuses_a_short_password_in_one_line(tmp_path: Path) -> None:
    data_dir, env = _env(tmp_path)
    result = cival(["user", "create", "short@example.com"], env, tmp_path, stdin="12345\n")
    assert result.returncode == 2
    assert "password" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "12345" not in result.stderr
    db_file = data_dir / "cival.sqlite3"
    assert not db_file.exists() or query(data_dir, "SELECT id FROM users WHERE email = ?", "short@example.com") == []


_STORE_CREDENTIAL = """
import asyncio
from cival.config import get_settings
from cival.core.service_registry import ServiceRegistry, ensure_database
from cival.models.notification_models import WebhookIn
from cival.models.user_models import ApiKeyIn, RegisterIn
from cival.services.auth_service import Principal

async def main():
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await ensure_database(settings)
    registry = ServiceRegistry(settings)
    await registry.start()
    try:
        user = await registry.auth.register(RegisterIn(email=EMAIL, password="long enough password"))
        principal = Principal(user_id=user.id, email=user.email, role=user.role, session_id=user.id)
        await registry.credentials.create(
            principal, ApiKeyIn(exchange="coinbase", api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE)
        )
        hook = await registry.notifications.create_webhook(principal, WebhookIn(url="https://example.com/hook"))
        print(hook.secret)
        print(user.id)
    finally:
        await registry.close()

asyncio.run(main())
"""

_READ_CREDENTIAL = """
import asyncio, json, sys, uuid
from sqlalchemy import select
from cival.config import get_settings
from cival.core.service_registry import ServiceRegistry
from cival.database.models import NotificationWebhook
from cival.services.webhook_delivery import secret_aad

async def main():
    registry = ServiceRegistry(get_settings())
    await registry.start()
    try:
        creds = await registry.credentials.credentials_for(uuid.UUID(sys.argv[1]), "coinbase")
        async with registry.database.system_session(read_only=True) as session:
            hook = await session.scalar(select(NotificationWebhook))
        secret = registry.notifications.cipher.decrypt(hook.secret_encrypted, aad=secret_aad(hook.user_id, hook.id))
        print(json.dumps([creds.api_key, creds.api_secret, creds.passphrase, secret]))
    finally:
        await registry.close()

asyncio.run(main())
"""


def test_keys_rotate_adds_a_primary_and_reencrypts(tmp_path: Path) -> None:
    data_dir, env = _env(tmp_path)
    plain = ["AKCLIROTATE0123456789", "cli-rotate-secret-value-42", "cli-passphrase"]
    constants = f"API_KEY, API_SECRET, PASSPHRASE = {plain!r}\nEMAIL = 'keys@example.com'\n"
    stored = run([sys.executable, "-c", constants + _STORE_CREDENTIAL], env, tmp_path)
    assert stored.returncode == 0, stored.stderr
    *_, webhook_secret, user_id = stored.stdout.strip().splitlines()
    key_file = data_dir / "secret.key"
    before = json.loads(key_file.read_text())
    assert before["primary"] == "k1"
    old_rows = query(
        data_dir, "SELECT api_key_encrypted, api_secret_encrypted, passphrase_encrypted FROM user_api_keys"
    )
    assert len(old_rows) == 1
    assert all(str(token).startswith("v1.k1.") for token in old_rows[0])

    result = cival(["keys", "rotate"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 1 credential(s) and 1 webhook secret(s) under key k2" in result.stdout

    after = json.loads(key_file.read_text())
    assert after["primary"] == "k2"
    assert set(after["keys"]) == {"k1", "k2"}
    assert after["keys"]["k1"] == before["keys"]["k1"]
    assert key_file.stat().st_mode & 0o077 == 0
    rows = query(data_dir, "SELECT api_key_encrypted, api_secret_encrypted, passphrase_encrypted FROM user_api_keys")
    assert len(rows) == 1
    for token in rows[0]:
        assert str(token).startswith("v1.k2.")
        assert all(value not in str(token) for value in plain)
    [(webhook_token,)] = query(data_dir, "SELECT secret_encrypted FROM notification_webhooks")
    assert str(webhook_token).startswith("v1.k2.")  # re-encrypted too, so retiring k1 cannot break signing

    read = run([sys.executable, "-c", _READ_CREDENTIAL, user_id], env, tmp_path)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout.strip().splitlines()[-1]) == [*plain, webhook_secret]  # the same secret


def test_keys_rotate_with_a_corrupted_credential_fails_in_one_line(tmp_path: Path) -> None:
    data_dir, env = _env(tmp_path)
    for number in (1, 2):
        constants = f"API_KEY, API_SECRET, PASSPHRASE = 'AKCORRUPT000{number}XYZ', 'secret-{number}-value', None\n"
        constants += f"EMAIL = 'corrupt{number}@example.com'\n"
        stored = run([sys.executable, "-c", constants + _STORE_CREDENTIAL], env, tmp_path)
        assert stored.returncode == 0, stored.stderr
    (first_id, _), (_, second_secret) = query(data_dir, "SELECT id, api_secret_encrypted FROM user_api_keys")
    with sqlite3.connect(data_dir / "cival.sqlite3") as conn:  # one row gets the other row's ciphertext
        conn.execute("UPDATE user_api_keys SET api_secret_encrypted = ? WHERE id = ?", (second_secret, first_id))
    result = cival(["keys", "rotate"], env, tmp_path)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 1
    assert result.returncode == 1
    assert "1 credential(s) or webhook secret(s) cannot be decrypted" in result.stderr
    assert "re-encrypted 1 credential(s) and 2 webhook secret(s) under key k2" in result.stdout  # readable: done
    # Running it again resumes the unfinished rotation instead of piling up primary keys.
    again = cival(["keys", "rotate"], env, tmp_path)
    assert again.returncode == 1
    assert "under key k2" in again.stdout
    assert json.loads((data_dir / "secret.key").read_text())["primary"] == "k2"
