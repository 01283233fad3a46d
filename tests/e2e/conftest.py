"""The processes that `make dev` (`ferry dev`) starts, once for all end-to-end tests."""
from __future__ import annotations

import subprocess

import pytest
import requests

from tests.processes import BIN, ROOT, ferry_env, free_ports, stop_group, wait_for

# `ferry dev` takes FERRY_ADMIN_KEY as its bootstrap key (both scopes) when it is set.
API_KEY = "e2e-bootstrap-api-key"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ferry-data")
    api_port, flower_port, redis_port, model_port = free_ports(4)
    env = ferry_env(api_port=api_port, flower_port=flower_port, embedded_redis_port=redis_port,
                    data_dir=data_dir, flower_password="e2e-secret", admin_key=API_KEY, worker_concurrency=1,
                    api_workers=1, log_format="json", http_model_hosts=f"127.0.0.1:{model_port}")
    log_path = data_dir / "dev.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(BIN / "ferry"), "dev"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{api_port}"
    try:
        wait_for(lambda: requests.get(f"{base}/health/ready", timeout=2).status_code == 200, 120,
                 "ferry dev", proc)
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {API_KEY}"
        yield {"api": base, "flower": f"http://127.0.0.1:{flower_port}", "log": log_path, "data": data_dir,
               "http": http, "redis": f"redis://127.0.0.1:{redis_port}/0", "model_port": model_port}
    except Exception:
        print(log_path.read_text(errors="replace")[-5000:])
        raise
    finally:
        stop_group(proc)


