import pytest

from tasks.settings import Settings


def test_environment_overrides_defaults():
    settings = Settings.from_env({"FERRY_API_PORT": "9000", "FERRY_REDIS_URL": "redis://h:1/2", "OTHER": "x"})
    assert settings.api_port == 9000 and settings.redis_url == "redis://h:1/2"
    assert settings.max_wait_s == 30.0


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="FERRY_API_PORT"):
        Settings.from_env({"FERRY_API_PORT": "eighty"})
