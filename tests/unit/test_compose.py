"""compose.yaml is checked against the Compose specification (no Docker engine runs here)."""
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"


def test_compose_file_matches_the_compose_spec():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_every_process_and_exactly_one_beat():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"redis", "api", "worker", "beat", "flower"} <= set(services)
    assert services["beat"]["deploy"]["replicas"] == 1
    command = services["redis"]["command"]
    # Every write on disk before Redis answers: a 202 is never lost to a Redis crash.
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    # Flower's password comes from its environment, never its command line (which `ps` shows).
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("ferry:${FERRY_FLOWER_PASSWORD:?")
    assert not any("basic" in arg for arg in services["flower"]["command"])


def test_every_ferry_service_gets_the_shared_environment():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in services.items():
        if name != "redis":
            assert service["environment"]["FERRY_REDIS_URL"] == "redis://redis:6379/0", name
            assert "FERRY_HTTP_MODEL_HOSTS" in service["environment"], name


def test_the_api_and_the_batch_worker_see_the_same_batch_inputs():
    # The API checks a job's file when the job is created; the batch worker reads it.
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mount = "./batch-inputs:/srv/ferry/var/batch-inputs:ro"
    assert mount in services["api"]["volumes"] and mount in services["batch-worker"]["volumes"]
    assert services["api"]["environment"]["FERRY_DATA_DIR"] == "/srv/ferry/var"
