"""What every bench shares: the load generator (wrk, driven by bench/post.lua) and the
processes under test (a private redis-server, Ferry's API and workers, baselines served
with the API's own gunicorn settings). Everything listens on 127.0.0.1 and is stopped
when the bench ends."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cli import api_command  # noqa: E402
from tasks.settings import Settings  # noqa: E402
from tests.processes import BIN, RedisServer, ferry_env, free_port, http_ok, stop_group, wait_for  # noqa: E402,F401

LUA = Path(__file__).resolve().parent / "post.lua"


@dataclasses.dataclass
class Load:
    """One wrk run: answers with status 200 per second, and their latency."""
    clients: int
    seconds: float
    ok: int
    not_200: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.ok / self.seconds

    def problems(self) -> str:
        found = [f"{n} {what}" for n, what in ((self.not_200, "not 200"), (self.socket_errors, "socket errors")) if n]
        return ", ".join(found)


def wrk(url: str, body: str, clients: int, seconds: float, headers: dict | None = None, timeout_s: int = 30) -> Load:
    """Closed loop: `clients` connections, each sends its next request when the last is
    answered. `{n}` in `body` makes every request distinct."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `make bench-env` installs it (Debian package wrk).")
    result = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", f"--timeout={timeout_s}s", "-s", str(LUA), url,
         "--", body, *(f"{name}: {value}" for name, value in (headers or {}).items())],
        capture_output=True, text=True, check=True,
    )
    line = next((line for line in result.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
    raw = json.loads(line[len("RESULT "):])
    return Load(clients=clients, seconds=raw["duration_us"] / 1e6, ok=raw["ok"], not_200=raw["not_200"],
                socket_errors=raw["socket_errors"], p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000)


def warm_up(url: str, body: str, headers: dict, timeout_s: float = 300) -> None:
    """Send one request until it is answered 200: the worker loads its model on first use,
    and a long-lived worker has done so long before anyone measures it."""
    def answered() -> bool:
        request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json", **headers})
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status == 200

    wait_for(answered, timeout_s, f"a first answer from {url}")


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU time (user and system) used so far by a process started in its own session and
    by everything it started: a measure of the path's cost that a busy machine does not
    inflate the way it inflates latency."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        # proc's process group (start_new_session made it proc's own), or proc alone
        if int(fields[3]) == proc.pid or int(stat.parent.name) == proc.pid:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def redis_counts(url: str) -> tuple[int, int]:
    """Commands processed and connections accepted by a Redis so far: what a request costs
    Redis, exactly, however busy the machine."""
    import redis

    client = redis.Redis.from_url(url)
    stats = client.info("stats")
    client.close()
    return stats["total_commands_processed"], stats["total_connections_received"]


def redis_round_trips(url: str) -> int:
    """Reads of client requests by a Redis so far: one per round trip (a pipeline or a
    script is one), so a path's count of waits for Redis (and, for a write, its fsync)."""
    import redis

    client = redis.Redis.from_url(url)
    reads = client.info("stats")["total_reads_processed"]
    client.close()
    return reads


class Processes:
    """Starts processes in their own sessions and stops them all on exit."""

    def __init__(self, work: Path):
        self.work = work
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = (self.work / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.started.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.started):
            stop_group(proc)
        self.started.clear()


@contextlib.contextmanager
def workspace(fsync: str | None = None):
    """A scratch folder, a private redis-server and the processes a bench starts. With
    `fsync` ("always" as in production, or "everysec"), Redis keeps an append-only file and
    a request that writes waits for the disk as it would there; without, Redis is memory only."""
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    processes = Processes(work)
    server = RedisServer(work / "redis", appendonly=fsync is not None, appendfsync=fsync or "always").start()
    try:
        yield work, server, processes
    finally:
        processes.stop()
        server.stop()


def ferry_settings(server: RedisServer, work: Path, repository: Path | None = None, **extra) -> dict:
    # One key sends all of a bench's load: its rate limit is raised out of reach, but still
    # counted on every request, as in production.
    settings = {"redis_url": server.url, "data_dir": work, "api_port": free_port(), "log_level": "warning",
                "rate_limit": "1000000/second", **extra}
    if repository is not None:
        settings["model_repository"] = repository
    return settings


def start_api(processes: Processes, settings: dict, application: str | None = None, name: str = "api") -> str:
    """Ferry's API as `ferry api` runs it, or a baseline `application` under the same
    gunicorn settings."""
    env = {**ferry_env(**settings), "PYTHONPATH": str(ROOT)}
    if application is None:
        argv = [str(BIN / "ferry"), "api"]
    else:
        argv = api_command(Settings.from_env(env), application)
    proc = processes.start(name, argv, env)
    base = f"http://127.0.0.1:{settings['api_port']}"
    wait_for(lambda: http_ok(f"{base}/health"), 60, name, proc)
    return base


def api_key(redis_url: str) -> dict:
    """A stored key with the predict scope, as the header every Ferry request sends."""
    import redis

    from app.keys import PREDICT, KeyStore

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    token, _ = KeyStore(client).create("bench", [PREDICT])
    client.close()
    return {"Authorization": f"Bearer {token}"}


def start_worker(processes: Processes, settings: dict, *args: str) -> subprocess.Popen:
    """`ferry worker` with the bench's settings; bench models are importable from bench/."""
    env = {**ferry_env(**settings), "PYTHONPATH": str(ROOT)}
    return processes.start("worker", [str(BIN / "ferry"), "worker", *args], env)


def wait_ready(base: str, proc: subprocess.Popen | None = None, timeout_s: float = 120) -> None:
    wait_for(lambda: http_ok(f"{base}/health/ready"), timeout_s, "API and worker", proc)


def row(cells: list, widths: list[int]) -> str:
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table, padded so that it also reads well in a terminal."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = [row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + [row(r, widths) for r in rows])
