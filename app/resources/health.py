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
        """Ready when Redis answers and every model's queue has a live worker."""
        ferry = services()
        checks: dict = {}
        try:
            ferry.redis.ping()
            checks["redis"] = "ok"
            live = live_queues(ferry.redis, ferry.settings.key_prefix, 2 * ferry.settings.heartbeat_s)
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
            live = set()
        checks["queues"] = {queue: ("ok" if queue in live else "no live worker")
                            for queue in sorted(ferry.registry.queues)}
        ready = checks["redis"] == "ok" and all(state == "ok" for state in checks["queues"].values())
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        if ready:
            return body
        return body, 503, {"Retry-After": str(ferry.settings.retry_after_s)}
