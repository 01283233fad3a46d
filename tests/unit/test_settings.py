import pytest

from tasks.settings import Settings


def test_environment_overrides_defaults():
    settings = Settings.from_env({"FERRY_API_PORT": "9000", "FERRY_REDIS_URL": "redis://h:1/2", "OTHER": "x"})
    assert settings.api_port == 9000 and settings.redis_url == "redis://h:1/2"
    assert settings.max_wait_s == 30.0


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="FERRY_API_PORT"):
        Settings.from_env({"FERRY_API_PORT": "eighty"})


@pytest.mark.parametrize("environ, words", [
    ({"FERRY_QUEUE_LIMITS": "realtime-cpu=abc"}, "FERRY_QUEUE_LIMITS='realtime-cpu=abc': each entry is queue=N"),
    ({"FERRY_QUEUE_LIMITS": "garbage"}, "not 'garbage'"),
    ({"FERRY_PREDICTION_TTL_S": "0"}, "FERRY_PREDICTION_TTL_S=0: must be at least 1"),
    ({"FERRY_MAX_WAITERS": "-1"}, "FERRY_MAX_WAITERS=-1: must be at least 0"),
    ({"FERRY_WORKER_CONCURRENCY": "0"}, "FERRY_WORKER_CONCURRENCY=0: must be at least 1"),
    ({"FERRY_MAX_CONTENT_LENGTH": "-1"}, "FERRY_MAX_CONTENT_LENGTH=-1"),
    ({"FERRY_REDIS_TIMEOUT_S": "0"}, "FERRY_REDIS_TIMEOUT_S=0.0"),
    ({"FERRY_LOG_FORMAT": "xml"}, "must be text or json"),
])
def test_values_no_process_could_work_with_fail_at_start(environ, words):
    """Rather than as a 500 or a 503 on every request."""
    with pytest.raises(ValueError) as refused:
        Settings.from_env(environ)
    assert words in str(refused.value)


def test_queue_limits_are_read_per_queue():
    settings = Settings(queue_limit=1000, queue_limits=" realtime-gpu=200 , batchy=0,")
    assert [settings.queue_limit_for(q) for q in ("realtime-gpu", "batchy", "realtime-cpu")] == [200, 0, 1000]
