"""Time from `cival serve` to a healthy `/api/v1/system/health`, on embedded SQLite.

Printed beside its floor, measured in the same run: a bare uvicorn app answering one route (the cost of Python,
FastAPI and uvicorn themselves). Cold = empty data dir (migrations run); warm = database already migrated.
Target: under 2 seconds.

Cival's bytecode is compiled first, as an installed package has it (and as the floor's FastAPI and uvicorn have
theirs): with PYTHONDONTWRITEBYTECODE set, an editable install would otherwise compile every Cival module again on
every start. COMPILE=0 skips that step (bytecode already written stays in use).
"""

from __future__ import annotations

import compileall
import importlib.util
import math
import os
import py_compile
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


def compile_cival() -> None:
    """Write Cival's bytecode beside its sources; checked by source hash, so a later edit is never run stale."""
    spec = importlib.util.find_spec("cival")
    for location in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(location, quiet=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU (user + system) a running process has used so far; NaN where /proc is not available."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_to_healthy(cmd: list[str], url: str, env: dict[str, str], cwd: str) -> tuple[float, float]:
    """Wall seconds from launch to the first healthy answer, and the CPU seconds the server had used by then."""
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
                        return time.perf_counter() - start, cpu_seconds(proc.pid)
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("not healthy within 30 s")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CIVAL_")}
    if os.environ.get("COMPILE", "1") != "0":
        compile_cival()
    cold: list[tuple[float, float]] = []
    warm: list[tuple[float, float]] = []
    bare: list[tuple[float, float]] = []
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
        ("cival serve, cold (migrates)", cold),
        ("cival serve, warm", warm),
        ("floor: bare FastAPI + uvicorn", bare),
    ]
    medians = [
        (name, statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)) for name, runs in rows
    ]
    floor_wall, floor_cpu = medians[2][1], medians[2][2]
    print(f"startup to healthy, median of {RUNS} runs (target < {TARGET_SECONDS:.1f} s)")
    print("cpu s: what the server process had used when it first answered (less disturbed by other load than seconds)")
    print(f"{'what':<34} {'seconds':>8} {'x floor':>8} {'cpu s':>8} {'x floor':>8}")
    for name, wall, cpu in medians:
        print(f"{name:<34} {wall:>8.3f} {wall / floor_wall:>8.2f} {cpu:>8.3f} {cpu / floor_cpu:>8.2f}")
    worst = max(medians[0][1], medians[1][1])
    print(f"{'PASS' if worst < TARGET_SECONDS else 'FAIL'}: slowest median {worst:.3f} s vs target {TARGET_SECONDS} s")


if __name__ == "__main__":
    main()
