"""Liveness and readiness."""
from __future__ import annotations

from flask.views import MethodView

from app.parsing import Blueprint

from app.schemas import HealthSchema
from app.services import services
from tasks.heartbeat import live_queues

blp = Blueprint("health", __name__, url_prefix="/health", description="Liveness and readiness probes.")


@blp.route("")
class Liveness(MethodView):
    @blp.response(200, HealthSchema)
    def get(self):
        """The API process is up; says nothing of Redis or workers."""
        return {"status": "ok", "checks": {}}


@blp.route("/ready")
class Readiness(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Redis is unreachable or a queue has no worker.")
    def get(self):
        """Ready when Redis answers and the queue of every model in the repository file has a live worker."""
        ferry = services()
        checks: dict = {}
        try:
            ferry.redis.ping()
            checks["redis"] = "ok"
            live = live_queues(ferry.redis, ferry.settings.key_prefix, 2 * ferry.settings.heartbeat_s)
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
            live = set()
        # The repository file's queues: a model registered at run time on a queue no worker
        # consumes must not take every API instance out of its load balancer.
        queues = {spec.queue for spec in ferry.registry.file_specs}
        checks["queues"] = {queue: ("ok" if queue in live else "no live worker") for queue in sorted(queues)}
        ready = checks["redis"] == "ok" and all(state == "ok" for state in checks["queues"].values())
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        if ready:
            return body
        return body, 503, {"Retry-After": str(ferry.settings.retry_after_s)}
