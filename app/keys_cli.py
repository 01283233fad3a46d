"""`ferry keys ...`: create, list and revoke API keys, against the API's Redis."""
from __future__ import annotations

import datetime

import click

from app.keys import SCOPES, KeyStore


def _store() -> KeyStore:
    from tasks.context import redis_client
    from tasks.settings import Settings

    settings = Settings.from_env()
    if not settings.redis_url:
        raise click.UsageError("Set FERRY_REDIS_URL (make dev prints it).")
    return KeyStore(redis_client(settings), settings.key_prefix, settings.admin_key)


@click.group("keys")
def keys() -> None:
    """API keys: each has a name and scopes (predict, admin); only its SHA-256 is stored."""


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(SCOPES),
              help="Repeat for several: --scope predict --scope admin.")
def create(name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print its token, once: it cannot be shown again."""
    if not name.strip():
        raise click.BadParameter("say who or what the key is for", param_hint="--name")
    token, api_key = _store().create(name.strip(), scopes)
    click.echo(f"Created key {api_key.id} ({api_key.name}; scopes {', '.join(api_key.scopes)}).")
    click.echo("Its token is shown only now; send it as `Authorization: Bearer <token>`:")
    click.echo(token)


@keys.command("list")
def list_keys() -> None:
    """Every key: id, name, scopes, creation time (never a token)."""
    found = _store().list()
    if not found:
        click.echo("No API keys. Create one with `ferry keys create --name NAME --scope predict`.")
    for api_key in found:
        created = (datetime.datetime.fromtimestamp(api_key.created_at, datetime.timezone.utc).isoformat(timespec="seconds")
                   if api_key.created_at else "from the environment")
        click.echo(f"{api_key.id}\t{api_key.name}\t{','.join(api_key.scopes)}\t{created}")


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke the key KEY_ID (see `ferry keys list`); every API process refuses it within FERRY_KEY_CACHE_S (5 s)."""
    store = _store()
    if store.bootstrap is not None and store.bootstrap[1].id == key_id:
        raise click.ClickException("That key is FERRY_ADMIN_KEY: unset it and restart the API to revoke it.")
    revoked = store.revoke(key_id)
    if revoked is None:
        raise click.ClickException(f"No key with id {key_id!r}.")
    click.echo(f"Revoked key {revoked.id} ({revoked.name}).")
