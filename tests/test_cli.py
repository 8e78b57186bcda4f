"""The `cival` command fails with one readable line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
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
