"""Swagger UI served from the swagger-ui-bundle package, so /docs works offline."""
from __future__ import annotations

from flask import Blueprint, send_from_directory
from swagger_ui_bundle import swagger_ui_path

STATIC_URL = "/docs/static/"

blp = Blueprint("swagger_ui_static", __name__)


@blp.route(STATIC_URL + "<path:filename>")
def static_file(filename: str):
    return send_from_directory(str(swagger_ui_path), filename, max_age=86400)


def init_app(app) -> None:
    app.register_blueprint(blp)
