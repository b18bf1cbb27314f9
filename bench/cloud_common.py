"""Helpers of the cloud benchmarks: the ``b2l cloud ...`` command line as a subprocess, a
throwaway cloud server on a random loopback port, device tokens, client processes, and the CPU
time of process trees (Linux ``/proc``).

Not a benchmark itself. The servers under test always run in their own processes; the load
comes from other processes (``run_clients``), and everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hil.b2l_process import b2l_argv
from hil.b2l_process import throwaway_cloud_env as cloud_env
from hil.services import LOOPBACK, find_free_port, wait_for_port


@contextmanager
def cloud_process(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A ``b2l cloud ...`` subprocess, terminated at the end; its log goes to a temp file."""
    log = Path(tempfile.mkstemp(prefix="b2l-bench-", suffix=".log")[1])
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        if proc.returncode not in (0, -15):
            print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
        log.unlink(missing_ok=True)


@dataclass(frozen=True)
class RunningServer:
    """A ``b2l cloud serve`` under test: its base URL and the PID of its main process."""

    url: str
    pid: int


@contextmanager
def cloud_server(database_url: str, workers: int = 1, **env: str) -> Iterator[RunningServer]:
    """``b2l cloud serve [--workers N]`` on a random loopback port, ready on every worker."""
    port = find_free_port()
    argv = b2l_argv(
        "cloud", "serve", "--host", LOOPBACK, "--port", str(port), "--no-migrate",
        "--workers", str(workers),
    )  # fmt: skip
    with cloud_process(argv, cloud_env(database_url, **env)) as proc:
        try:
            wait_for_port(LOOPBACK, port, 60)
        except TimeoutError:
            raise RuntimeError(f"b2l cloud serve did not start (exit {proc.poll()})") from None
        base_url = f"http://{LOOPBACK}:{port}"
        wait_for_workers(base_url, workers, 60)
        yield RunningServer(base_url, proc.pid)


def tree_cpu_s(root_pid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by a process and each of its living
    descendants, by PID, read from ``/proc`` (a descendant that has exited no longer counts)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent pid, cpu seconds)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    used: dict[int, float] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        if pid in stats:
            used[pid] = stats[pid][1]
            todo.extend(children.get(pid, []))
    return used


def cpu_since(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """CPU seconds each process used between two ``tree_cpu_s`` readings (new ones: all)."""
    return {pid: cpu - before.get(pid, 0.0) for pid, cpu in after.items()}


def wait_for_workers(base_url: str, workers: int, timeout_s: float) -> None:
    """Poll ``/healthz`` on new connections until ``workers`` processes answered (told apart
    by the per-process prefix of their ``x-request-id``): a load started earlier would open
    every connection on the workers that listen already."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {workers} workers answered")
        try:
            response = httpx.get(f"{base_url}/healthz", timeout=5)
            seen.add(response.headers["x-request-id"].rpartition("-")[0])
        except httpx.TransportError:
            time.sleep(0.05)


def create_device(database_url: str, battery_id: str) -> dict[str, str]:
    """``b2l cloud create-device BATTERY --json``."""
    done = subprocess.run(
        b2l_argv("cloud", "create-device", battery_id, "--json"),
        env=cloud_env(database_url),
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.decode(errors="replace"))
    result: dict[str, str] = json.loads(done.stdout)
    return result


def token(base_url: str, username: str, password: str) -> str:
    """An access token from ``POST /api/v1/auth/token``."""
    response = httpx.post(
        f"{base_url}/api/v1/auth/token",
        data={"username": username, "password": password},
        timeout=30,
    )
    response.raise_for_status()
    access: str = response.json()["access_token"]
    return access


def _client_main(
    target: Callable[..., dict[str, Any]], barrier: Any, results: Any, index: int, job: Any
) -> None:
    try:
        results.put((index, target(barrier, *job)))
    except BaseException as exc:
        barrier.abort()
        results.put((index, {"error": f"{type(exc).__name__}: {exc}"}))


def run_clients(
    target: Callable[..., dict[str, Any]],
    jobs: Sequence[tuple[Any, ...]],
    on_start: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Run ``target(barrier, *job)`` in one process per job; they start together after their
    set-up (``barrier.wait()`` inside ``target``), and ``on_start()`` is called then. Returns
    their results and the wall-clock seconds from the common start to the last one's end."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(jobs) + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_client_main, args=(target, barrier, results, i, job), daemon=True)
        for i, job in enumerate(jobs)
    ]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=600)
    except Exception:
        out = [results.get(timeout=60) for _ in procs]
        raise RuntimeError(f"a client failed before the start: {out}") from None
    start = time.perf_counter()
    if on_start is not None:
        on_start()
    collected = dict(results.get(timeout=3600) for _ in procs)
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join(30)
    ordered = [collected[i] for i in range(len(jobs))]
    errors = [r["error"] for r in ordered if "error" in r]
    if errors:
        raise RuntimeError(f"client errors: {errors}")
    return ordered, wall


_WRK_SCRIPT = """
local targets = {%s}
local n = #targets
math.randomseed(os.time())
request = function()
  local t = targets[math.random(n)]
  local headers = {}
  if t[2] ~= "" then headers["Authorization"] = "Bearer " .. t[2] end
  return wrk.format("GET", t[1], headers)
end
done = function(summary, latency, requests)
  local s = summary
  io.write(string.format(
    '{"requests": %%d, "seconds": %%.6f, "non_2xx": %%d, "socket_errors": %%d, ' ..
    '"p50_ms": %%.3f, "p90_ms": %%.3f, "p99_ms": %%.3f, "max_ms": %%.3f}\\n',
    s.requests, s.duration / 1e6, s.errors.status,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


def wrk_get(
    base_url: str,
    path_tokens: Sequence[tuple[str, str]],
    seconds: float,
    connections: int,
    threads: int = 2,
) -> dict[str, float]:
    """GETs of random (path, bearer token) by ``wrk`` (C, closed loop: each connection waits
    for its answer before the next request) for ``seconds``; requests/s and latency
    percentiles. A token of ``""`` sends no Authorization header. Raises if wrk is missing or
    any answer was not 2xx."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (or use --load httpx)")
    targets = ",".join(f'{{"{path}","{bearer}"}}' for path, bearer in path_tokens)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % targets)
    try:
        done = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--timeout",
                "10s",
                "-s",
                script.name,
                base_url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
    finally:
        Path(script.name).unlink(missing_ok=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result: dict[str, float] = json.loads(lines[-1])
    if result["non_2xx"] or result["socket_errors"]:
        raise RuntimeError(f"wrk saw failed requests: {result}")
    result["requests_per_s"] = result["requests"] / result["seconds"]
    return result
