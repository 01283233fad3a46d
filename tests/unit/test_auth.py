"""API keys: hashed at rest, scoped, managed from the CLI; predictions are private to their key."""
import hashlib

import pytest
from click.testing import CliRunner

from app import create_app
from app.cli import main as ferry
from app.keys import KeyStore
from tests.auth import authorize, keyed_client

PIXELS = [0.0] * 64
SUBMIT = ("/models/digits/predictions", {"input": {"pixels": PIXELS}})


def test_only_a_sha256_of_the_token_is_stored(fake_redis):
    store = KeyStore(fake_redis)
    token, api_key = store.create("ci", ["predict"])
    stored = fake_redis.hgetall("ferry:api-keys")
    assert list(stored) == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in repr(stored)
    assert store.lookup(token) == api_key and api_key.scopes == ("predict",)
    assert store.lookup(token + "x") is None


def test_scopes_are_checked_when_a_key_is_made(fake_redis):
    with pytest.raises(ValueError, match="root"):
        KeyStore(fake_redis).create("x", ["root"])
    with pytest.raises(ValueError):
        KeyStore(fake_redis).create("x", [])


def test_no_key_or_a_bad_one_is_401(app):
    anonymous = app.test_client()
    response = anonymous.post(*SUBMIT[:1], json=SUBMIT[1])
    assert response.status_code == 401
    assert set(response.json) == {"code", "status", "message", "errors"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.get("/predictions/" + "0" * 32).status_code == 401
    for header in ("Bearer nope", "Basic dXNlcjpwYXNz", "Bearer", "ferry_abc"):
        response = anonymous.post(SUBMIT[0], json=SUBMIT[1], headers={"Authorization": header})
        assert response.status_code == 401, header


def test_a_key_without_the_scope_is_403(app):
    admin_only = keyed_client(app, scopes=["admin"])
    response = admin_only.post(SUBMIT[0], json=SUBMIT[1])
    assert response.status_code == 403 and "predict" in response.json["message"]
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert keyed_client(app, scopes=["predict"]).get("/batch-jobs").status_code == 403
    assert admin_only.get("/batch-jobs").status_code == 200


def test_auth_is_checked_before_the_body_and_the_model(app):
    anonymous = app.test_client()
    assert anonymous.post("/models/nope/predictions", data="{", content_type="application/json").status_code == 401


def test_a_revoked_key_is_refused_at_once(app):
    client = keyed_client(app)
    assert client.post(SUBMIT[0], json=SUBMIT[1]).status_code == 202
    assert app.extensions["ferry"].keys.revoke(client.api_key.id) is not None
    assert client.post(SUBMIT[0], json=SUBMIT[1]).status_code == 401


def test_a_prediction_is_visible_only_to_its_key(app):
    alice, bob = keyed_client(app, name="alice"), keyed_client(app, name="bob")
    location = alice.post(SUBMIT[0], json=SUBMIT[1]).headers["Location"]
    assert alice.get(location).status_code == 200
    theirs, never_issued = bob.get(location), bob.get("/predictions/" + "0" * 32)
    assert theirs.status_code == 404
    # Nothing tells "someone else's" from "never issued" apart but the id in the message.
    assert theirs.json["message"].replace(location.rsplit("/", 1)[1], "ID") == \
        never_issued.json["message"].replace("0" * 32, "ID")


def test_health_docs_and_the_model_catalogue_are_open(app):
    anonymous = app.test_client()
    for path in ("/health", "/openapi.json", "/docs", "/models", "/models/digits"):
        assert anonymous.get(path).status_code == 200, path


def test_the_bootstrap_key_has_every_scope_and_is_not_stored(fake_redis, sender):
    token = "bootstrap-key-of-twenty-chars"
    app = create_app({"redis_url": "redis://unused:1/0", "admin_key": token}, redis_client=fake_redis, sender=sender)
    client = authorize(app.test_client(), token)
    assert client.post(SUBMIT[0], json=SUBMIT[1]).status_code == 202
    assert client.get("/batch-jobs").status_code == 200
    assert fake_redis.hlen("ferry:api-keys") == 0
    with pytest.raises(ValueError, match="at least 16"):
        create_app({"redis_url": "redis://unused:1/0", "admin_key": "short"}, redis_client=fake_redis, sender=sender)


def test_the_openapi_document_names_the_scheme_and_the_answers(client):
    spec = client.get("/openapi.json").json
    scheme = spec["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    submit = spec["paths"]["/models/{name}/predictions"]["post"]
    assert submit["security"] == [{"apiKey": []}] and {"401", "403"} <= set(submit["responses"])
    assert "security" not in spec["paths"]["/health"]["get"]
    assert "security" in spec["paths"]["/batch-jobs"]["post"]


def test_keys_cli_create_list_revoke(monkeypatch, fake_redis):
    import tasks.context

    monkeypatch.setattr(tasks.context, "redis_client", lambda settings: fake_redis)
    monkeypatch.setenv("FERRY_REDIS_URL", "redis://unused:1/0")
    monkeypatch.delenv("FERRY_ADMIN_KEY", raising=False)
    runner = CliRunner()
    created = runner.invoke(ferry, ["keys", "create", "--name", "web", "--scope", "predict", "--scope", "admin"])
    assert created.exit_code == 0, created.output
    token = created.output.splitlines()[-1]
    api_key = KeyStore(fake_redis).lookup(token)
    assert api_key.name == "web" and api_key.scopes == ("predict", "admin")
    listed = runner.invoke(ferry, ["keys", "list"]).output
    assert api_key.id in listed and "predict,admin" in listed and token not in listed
    assert runner.invoke(ferry, ["keys", "create", "--name", "x", "--scope", "root"]).exit_code != 0
    assert runner.invoke(ferry, ["keys", "revoke", api_key.id]).exit_code == 0
    assert KeyStore(fake_redis).lookup(token) is None
    assert runner.invoke(ferry, ["keys", "revoke", api_key.id]).exit_code != 0


def test_a_process_trusts_a_found_key_for_key_cache_s(fake_redis, monkeypatch):
    import app.keys

    clock = [1000.0]
    monkeypatch.setattr(app.keys.time, "monotonic", lambda: clock[0])
    here, elsewhere = KeyStore(fake_redis, cache_s=5), KeyStore(fake_redis)
    token, api_key = elsewhere.create("web", ["predict"])
    assert here.lookup(token) == api_key
    elsewhere.revoke(api_key.id)  # another process
    assert here.lookup(token) == api_key
    clock[0] += 5.1
    assert here.lookup(token) is None
    assert KeyStore(fake_redis, cache_s=5).lookup("ferry_never-made") is None


def test_the_command_line_says_what_is_wrong_in_one_line(monkeypatch):
    monkeypatch.setenv("FERRY_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    runner = CliRunner()
    unreachable = runner.invoke(ferry, ["keys", "list"])
    assert unreachable.exit_code == 1 and "Redis is unreachable (FERRY_REDIS_URL)" in unreachable.output
    assert "Traceback" not in unreachable.output
    monkeypatch.setenv("FERRY_PREDICTION_TTL_S", "0")
    assert "FERRY_PREDICTION_TTL_S=0: must be at least 1." in runner.invoke(ferry, ["keys", "list"]).output
    monkeypatch.delenv("FERRY_PREDICTION_TTL_S")
    nameless = runner.invoke(ferry, ["keys", "create", "--name", " ", "--scope", "predict"])
    assert nameless.exit_code == 2 and "--name" in nameless.output
