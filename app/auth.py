"""Who is calling: bearer API keys with scopes, and the one ownership check for records.

Routes that run a model or read a result need the `predict` scope; admin routes (batch
jobs, model registration) need `admin`. A request without a key, or with one that is
unknown or revoked, is 401; a valid key without the scope is 403. With no key created,
every guarded route is closed.
"""
from __future__ import annotations

import functools

from flask import g, request
from flask_smorest import abort

from app.keys import ApiKey
from app.services import services

REALM = 'Bearer realm="ferry"'
SECURITY_SCHEME = "apiKey"


def document(api) -> None:
    """Name the scheme in the OpenAPI document; guarded operations refer to it."""
    api.spec.components.security_scheme(SECURITY_SCHEME, {
        "type": "http", "scheme": "bearer",
        "description": "`Authorization: Bearer <key>`; keys are made with `ferry keys create` and carry the "
                       "scopes `predict` (submit and read predictions) and/or `admin` (batch jobs, models).",
    })


def bearer_token() -> str | None:
    return bearer_token_of(request.headers.get("Authorization", ""))


def bearer_token_of(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer <token>` header's value, or None."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def current_key() -> ApiKey | None:
    """The key this request was sent with (looked up once per request), or None."""
    if "ferry_api_key" not in g:
        token = bearer_token()
        g.ferry_api_key = services().keys.lookup(token) if token else None
    return g.ferry_api_key


def require_scope(scope: str):
    """Decorator: the view runs only for a valid key that holds `scope`."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            api_key = current_key()
            if api_key is None and bearer_token() is None:
                abort(401, message="This route needs an API key: send `Authorization: Bearer <key>`.",
                      headers={"WWW-Authenticate": REALM})
            if api_key is None:
                abort(401, message="The API key is not valid (unknown or revoked).",
                      headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
            if scope not in api_key.scopes:
                abort(403, message=f"This API key lacks the {scope!r} scope.",
                      headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'})
            return view(*args, **kwargs)

        return wrapper

    return decorator


def owned_or_404(record: dict | None, message: str) -> dict:
    """`record` when the calling key made it; 404 otherwise, exactly as if it did not exist,
    so that nobody learns which ids belong to others. Every per-prediction route uses this."""
    api_key = current_key()
    if record is None or api_key is None or record.get("owner") != api_key.id:
        abort(404, message=message)
    return record
