"""The worker's model pool: lazy loads, least-recently-used eviction by count and memory,
idle eviction, models no longer served, and what it reports about where models are loaded."""
from __future__ import annotations

import json
import time

import pytest

from models.declaration import parse_repository
from tasks.pool import ModelPool, loaded_key, where_loaded
from tests import fake_models
from tests.fake_models import declaration


@pytest.fixture(autouse=True)
def _forget_closed():
    fake_models.CLOSED.clear()


def specs(*names, **extra):
    return {spec.name: spec for spec in parse_repository(
        {"models": [declaration(name, "Weighty", **extra) for name in names]})}


def test_models_load_on_first_use_and_are_kept(fake_redis):
    pool = ModelPool(redis=fake_redis)
    spec = specs("a")["a"]
    assert pool.loaded() == []
    first = pool.get(spec)
    assert pool.get(spec) is first and pool.loaded() == [("a", "1")]


def test_past_the_count_the_least_recently_used_model_goes(fake_redis):
    pool = ModelPool(max_models=2, redis=fake_redis)
    a, b, c = specs("a", "b", "c").values()
    pool.get(a), pool.get(b), pool.get(a)  # b is now the least recently used
    pool.get(c)
    assert sorted(pool.loaded()) == [("a", "1"), ("c", "1")]
    assert fake_models.CLOSED == ["b"]
    assert not fake_redis.hgetall(loaded_key("ferry:", "b")), "an unloaded model is no longer reported"


def test_past_the_memory_budget_the_least_recently_used_models_go(fake_redis):
    pool = ModelPool(memory_mb=250, redis=fake_redis)
    a, b, c = specs("a", "b", "c").values()
    for spec in (a, b, c):  # 100 MB each
        pool.get(spec)
    assert pool.loaded() == [("b", "1"), ("c", "1")] and fake_models.CLOSED == ["a"]


def test_the_model_just_loaded_stays_even_alone_over_budget(fake_redis):
    pool = ModelPool(memory_mb=50, redis=fake_redis)
    a, b = specs("a", "b").values()
    pool.get(a), pool.get(b)
    assert pool.loaded() == [("b", "1")]


def test_idle_models_go(fake_redis):
    pool = ModelPool(idle_s=60, redis=fake_redis)
    a, b = specs("a", "b").values()
    pool.get(a), pool.get(b)
    assert pool.evict_idle(now=time.time() + 30) == []
    pool.get(b)
    assert pool.evict_idle(now=time.time() + 61) == [("a", "1"), ("b", "1")]
    assert pool.loaded() == []


def test_a_model_no_longer_served_goes_at_the_next_report(fake_redis):
    served = {"a"}
    pool = ModelPool(redis=fake_redis, serves=lambda spec: spec.name in served)
    a, b = specs("a", "b").values()
    pool.get(a), pool.get(b)
    pool.report_all()
    assert pool.loaded() == [("a", "1")]


def test_a_changed_declaration_is_loaded_again(fake_redis):
    pool = ModelPool(redis=fake_redis)
    first = pool.get(specs("a")["a"])
    again = pool.get(specs("a", timeout_s=5)["a"])
    assert again is not first and fake_models.CLOSED == ["a"]


def test_where_a_model_is_loaded_is_reported_and_stale_reports_are_dropped(fake_redis):
    pool = ModelPool(redis=fake_redis)
    pool.get(specs("a")["a"])
    (entry,) = where_loaded(fake_redis, "ferry:", "a", max_age_s=15)
    assert entry["version"] == "1" and entry["device"] == "cpu" and entry["memory_mb"] == 100.0
    assert entry["worker"].endswith(f":{entry['pid']}") and entry["since"] <= entry["last_used"] <= time.time()
    dead = {**entry, "worker": "elsewhere:1", "seen": time.time() - 60}
    fake_redis.hset(loaded_key("ferry:", "a"), "elsewhere:1:1", json.dumps(dead))
    assert [found["worker"] for found in where_loaded(fake_redis, "ferry:", "a", max_age_s=15)] == [entry["worker"]]
    assert fake_redis.hkeys(loaded_key("ferry:", "a")) == [f"{entry['worker']}:1"]


def test_a_failed_setup_is_given_again_for_a_while_then_tried_again(fake_redis):
    fake_models.SETUP_TRIES.clear()
    spec = parse_repository({"models": [declaration("broken", "FailingSetup")]})[0]
    pool = ModelPool(redis=fake_redis)
    for _ in range(3):  # three batches: one setup, its error given to all three
        with pytest.raises(FileNotFoundError, match="weights.pt not found"):
            pool.get(spec)
    assert len(fake_models.SETUP_TRIES) == 1
    held_spec, error, _ = pool._failed[("broken", "1")]
    pool._failed[("broken", "1")] = (held_spec, error, 0.0)  # SETUP_RETRY_S has passed
    with pytest.raises(FileNotFoundError):
        pool.get(spec)
    assert len(fake_models.SETUP_TRIES) == 2
