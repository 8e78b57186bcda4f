"""Time from `cival serve` to a healthy `/api/v1/system/health`, on embedded SQLite.

Printed beside its floor, measured in the same run: a bare uvicorn app answering one route (the cost of Python,
FastAPI and uvicorn themselves). Cold = empty data dir (migrations run); warm = database already migrated.
Target: under 2 seconds.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RUNS = int(os.environ.get("RUNS", "5"))
TARGET_SECONDS = 2.0
BARE_APP = """
from fastapi import FastAPI
app = FastAPI()
@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def time_to_healthy(cmd: list[str], url: str, env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        deadline = start + 30
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback only
                    if resp.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("not healthy within 30 s")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")}
    cold, warm, bare = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "bare_app.py").write_text(BARE_APP)
        for i in range(RUNS):
            port = free_port()
            env = base_env | {"CIVAL_DATA_DIR": f"{tmp}/data{i}", "CIVAL_PORT": str(port)}
            url = f"http://127.0.0.1:{port}/api/v1/system/health"
            cold.append(time_to_healthy([sys.executable, "-m", "cival", "serve"], url, env, tmp))
            warm.append(time_to_healthy([sys.executable, "-m", "cival", "serve"], url, env, tmp))
            port = free_port()
            bare.append(
                time_to_healthy(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "bare_app:app",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                    ],
                    f"http://127.0.0.1:{port}/health",
                    base_env,
                    tmp,
                )
            )
    rows = [
        ("cival serve, cold (migrates)", statistics.median(cold)),
        ("cival serve, warm", statistics.median(warm)),
        ("floor: bare FastAPI + uvicorn", statistics.median(bare)),
    ]
    print(f"startup to healthy, median of {RUNS} runs (target < {TARGET_SECONDS:.1f} s)")
    print(f"{'what':<34} {'seconds':>8} {'x floor':>8}")
    for name, seconds in rows:
        print(f"{name:<34} {seconds:>8.3f} {seconds / rows[2][1]:>8.2f}")
    worst = max(rows[0][1], rows[1][1])
    print(f"{'PASS' if worst < TARGET_SECONDS else 'FAIL'}: slowest median {worst:.3f} s vs target {TARGET_SECONDS} s")


if __name__ == "__main__":
    main()
