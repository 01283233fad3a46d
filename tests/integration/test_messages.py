"""The prediction message the API pushes itself is the one Celery would have pushed."""
import base64
import json

import redis

from models.declaration import parse_repository
from tasks.celery_app import create_celery
from tasks.senders import CelerySender
from tasks.settings import Settings
from tests.fake_models import declaration


def test_a_held_message_is_what_celery_would_push_and_nothing_is_pushed(redis_url):
    [spec] = parse_repository({"models": [declaration("echo", "Echo", queue="held-messages")]})
    sender = CelerySender(create_celery(Settings(redis_url=redis_url)))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    key, payload = sender.message("a" * 32, spec)
    assert key == "held-messages" and client.llen(key) == 0
    message = json.loads(payload)
    assert message["headers"]["task"] == "ferry.predict"
    assert message["headers"]["timelimit"] == [spec.hard_timeout_s, spec.timeout_s]
    assert json.loads(base64.b64decode(message["body"]))[0] == ["a" * 32, "echo", "1"]
    sender.send("b" * 32, spec)  # outside `message`, Celery pushes as ever
    assert client.llen(key) == 1
    client.delete(key)


def test_messages_from_the_template_are_celerys_but_for_fresh_ids(redis_url):
    [spec] = parse_repository({"models": [declaration("echo", "Echo", queue="held-messages")]})
    sender = CelerySender(create_celery(Settings(redis_url=redis_url)))
    built = json.loads(sender._built("c" * 32, spec)[1])
    sender.message("a" * 32, spec)  # makes the template
    key, payload = sender.message("c" * 32, spec)
    again = json.loads(sender.message("c" * 32, spec)[1])
    templated = json.loads(payload)
    assert key == "held-messages"
    # Each message has its own task id and delivery tag, as Celery gives it.
    ids = {message["headers"]["id"] for message in (built, templated, again)}
    tags = {message["properties"]["delivery_tag"] for message in (built, templated, again)}
    assert len(ids) == 3 and len(tags) == 3
    for message in (built, templated):
        task_id = message["headers"]["id"]
        assert message["headers"]["root_id"] == message["properties"]["correlation_id"] == task_id
        message["headers"]["id"] = message["headers"]["root_id"] = message["properties"]["correlation_id"] = "-"
        message["properties"]["delivery_tag"] = "-"
        message["body"] = json.loads(base64.b64decode(message["body"]))
    assert templated == built
    assert templated["body"][0] == ["c" * 32, "echo", "1"]


def test_a_model_with_a_list_default_has_its_messages_templated(redis_url):
    # A spec holding a list (an array input's default) cannot be hashed: the template is keyed otherwise.
    [spec] = parse_repository({"models": [{"name": "m", "kind": "http", "version": "1", "url": "http://x/y",
                                           "queue": "held-messages",
                                           "inputs": {"xs": {"type": "array", "items": "number", "default": [1, 2]}}}]})
    sender = CelerySender(create_celery(Settings(redis_url=redis_url)))
    first, second = (json.loads(sender.message(n * 32, spec)[1]) for n in "ab")
    assert [json.loads(base64.b64decode(m["body"]))[0][0] for m in (first, second)] == ["a" * 32, "b" * 32]
