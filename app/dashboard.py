"""The dashboard at `/`: static HTML, CSS and JS from app/static, nothing from a CDN."""
from __future__ import annotations

from flask import Blueprint, current_app, send_from_directory

blp = Blueprint("dashboard", __name__)

# The page runs only its own scripts and talks only to this API: an injected script could
# otherwise read the API key the page keeps in localStorage.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@blp.get("/")
def page():
    response = send_from_directory(current_app.static_folder, "dashboard.html", max_age=0)
    response.headers.update(SECURITY_HEADERS)
    return response


def init_app(app) -> None:
    app.register_blueprint(blp)
