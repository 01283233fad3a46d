"""Admin routes are closed by default: they need `Authorization: Bearer <FERRY_ADMIN_KEY>`."""
from __future__ import annotations

import functools
import hmac

from flask import request
from flask_smorest import abort

from app.services import services


def require_admin(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        expected = services().settings.admin_key
        if not expected:
            abort(403, message="Admin routes are disabled: set FERRY_ADMIN_KEY to enable them.")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            abort(401, message="This route needs an admin key: send `Authorization: Bearer <key>`.",
                  headers={"WWW-Authenticate": 'Bearer realm="ferry-admin"'})
        if not hmac.compare_digest(given.encode(), expected.encode()):
            abort(401, message="The admin key is not valid.", headers={"WWW-Authenticate": 'Bearer realm="ferry-admin"'})
        return view(*args, **kwargs)

    return wrapper
