"""The `cival` command fails with one readable line, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

CIVAL = [sys.executable, "-m", "cival"]


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")} | env
    return subprocess.run(  # noqa: S603 - our own CLI
        [*CIVAL, *args], env=full_env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_bad_setting_stops_start_up_with_one_line(tmp_path: Path) -> None:
    result = run(["serve"], {"CIVAL_PORT": "not-a-port"}, tmp_path)
    assert result.returncode == 2
    assert "CIVAL_PORT" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_database_stops_start_up_cleanly(tmp_path: Path) -> None:
    env = {"CIVAL_DATABASE_URL": "postgresql://cival:s3cret@127.0.0.1:1/nowhere", "CIVAL_LOG_JSON": "false"}
    result = run(["serve"], env, tmp_path)
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_is_idempotent_on_embedded_sqlite(tmp_path: Path) -> None:
    env = {"CIVAL_DATA_DIR": str(tmp_path / "data")}
    first = run(["db", "upgrade"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    second = run(["db", "upgrade"], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert first.stdout == second.stdout
    assert (tmp_path / "data" / "cival.sqlite3").exists()
    current = run(["db", "current"], env, tmp_path)
    code_head = current.stdout.split("code:")[1].strip()
    assert current.stdout.startswith(f"database: {code_head}")


@pytest.mark.parametrize("args", [["--help"], ["db", "--help"]])
def test_help_works(args: list[str], tmp_path: Path) -> None:
    assert run(args, {}, tmp_path).returncode == 0


def test_serve_preflight_imports_neither_alembic_nor_the_service_stack(tmp_path: Path) -> None:
    """The check before the server starts is one query: no Alembic on a current database, no services yet."""
    env = {"CIVAL_DATA_DIR": str(tmp_path / "data")}
    assert run(["db", "upgrade"], env, tmp_path).returncode == 0
    code = (
        "import asyncio, sys\n"
        "from cival import cli\n"
        "from cival.config import get_settings\n"
        "asyncio.run(cli._preflight(get_settings()))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic' or m.startswith('cival.services')))\n"
    )
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")} | env
    result = subprocess.run(  # noqa: S603 - our own code
        [sys.executable, "-c", code],
        env=full_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_migrates_a_fresh_embedded_database_then_answers_healthy(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")} | {
        "CIVAL_DATA_DIR": str(tmp_path / "data"),
        "CIVAL_PORT": str(port),
        "CIVAL_LOG_JSON": "true",
    }
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [*CIVAL, "serve"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(60, proc.kill)  # a server that never says it listens fails the test, never hangs it
    watchdog.start()
    try:
        assert proc.stderr is not None
        events = []
        for line in proc.stderr:  # the server says when it listens: no polling
            event = json.loads(line)["event"] if line.startswith("{") else line
            events.append(event)
            if event.startswith("Uvicorn running on"):
                break
        assert "database migrated" in events
        assert events.index("database migrated") < events.index("Application startup complete.")
        url = f"http://127.0.0.1:{port}/api/v1/system/health"
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
            body = json.loads(response.read())
        assert body["status"] == "ok"
        assert (body["database"]["status"], body["database"]["backend"]) == ("ok", "sqlite")
    finally:
        watchdog.cancel()
        proc.terminate()
        proc.wait(timeout=30)
    current = run(["db", "current"], {"CIVAL_DATA_DIR": str(tmp_path / "data")}, tmp_path)
    assert current.stdout.startswith(f"database: {current.stdout.split('code:')[1].strip()}")


def test_serve_stops_when_the_first_migration_fails(tmp_path: Path) -> None:
    """A fresh-looking database whose first migration cannot apply: start-up stops, the server never listens."""
    (tmp_path / "data").mkdir()
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "cival.sqlite3")) as conn:
        conn.execute("CREATE TABLE users (x INTEGER)")  # 0001 creates `users`
    result = run(["serve", "--port", str(_free_port())], {"CIVAL_DATA_DIR": str(tmp_path / "data")}, tmp_path)
    assert result.returncode == 1
    assert "table users already exists" in result.stderr
    assert "Uvicorn running" not in result.stderr
