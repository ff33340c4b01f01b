"""Settings: defaults, the seed's aliases, environment variables, and refusals."""

from __future__ import annotations

import pytest

from rusty_ws import ConfigError
from rusty_ws.brokers import broker_from_url
from rusty_ws.config import DEFAULTS, Settings, config_from_environ


def test_defaults_are_filled_in() -> None:
    config: dict = {}
    settings = Settings.from_config(config)
    assert set(DEFAULTS) <= set(config)
    assert settings.jwt_expiration_seconds == 3600
    assert settings.cors_origins == ("*",)
    assert settings.broker_url == "memory://"
    assert not settings.require_auth
    assert settings.compression == 0


def test_seed_aliases() -> None:
    settings = Settings.from_config({"JWT_SECRET_KEY": "k", "JWT_EXPIRATION_SECONDS": 60})
    assert (settings.jwt_secret_key, settings.jwt_expiration_seconds) == ("k", 60)


def test_prefixed_name_wins_over_alias() -> None:
    settings = Settings.from_config({"JWT_SECRET_KEY": "old", "RUSTY_WS_JWT_SECRET_KEY": "new"})
    assert settings.jwt_secret_key == "new"


def test_environment() -> None:
    found = config_from_environ({
        "JWT_SECRET_KEY": "12345",
        "RUSTY_WS_JWT_SECRET_KEY": "67890",
        "RUSTY_WS_MAX_CONNECTIONS": "5",
        "RUSTY_WS_REQUIRE_AUTH": "true",
        "RUSTY_WS_CORS_ORIGINS": "http://a.example, http://b.example",
        "UNRELATED": "x",
    })
    assert found == {
        "RUSTY_WS_JWT_SECRET_KEY": "67890",
        "RUSTY_WS_MAX_CONNECTIONS": 5,
        "RUSTY_WS_REQUIRE_AUTH": True,
        "RUSTY_WS_CORS_ORIGINS": "http://a.example, http://b.example",
    }
    settings = Settings.from_config(dict(found))
    assert settings.cors_origins == ("http://a.example", "http://b.example")
    assert settings.origin_allowed("http://a.example/")
    assert not settings.origin_allowed("http://evil.example")
    assert settings.origin_allowed(None)


@pytest.mark.parametrize(
    "key, value",
    [
        ("RUSTY_WS_MAX_CONNECTIONS", 0),
        ("RUSTY_WS_MAX_MESSAGE_SIZE", -1),
        ("RUSTY_WS_PING_TIMEOUT", "soon"),
        ("RUSTY_WS_JWT_EXPIRATION_SECONDS", 0),
        ("RUSTY_WS_COMPRESSION", 10),
        ("RUSTY_WS_COMPRESSION", 2.5),
        ("RUSTY_WS_COMPRESSION", "fast"),
    ],
)
def test_refuses_values_that_cannot_work(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        Settings.from_config({key: value})


@pytest.mark.parametrize("key, value, expected", [
    ("RUSTY_WS_MAX_CONNECTIONS", 0, "must be a whole number > 0"),
    ("RUSTY_WS_MAX_CONNECTIONS", float("inf"), "must be a whole number > 0"),
    ("RUSTY_WS_MAX_CONNECTIONS", True, "must be a whole number > 0"),
    ("RUSTY_WS_MAX_SUBSCRIPTIONS", 0.5, "must be a whole number > 0"),
    ("RUSTY_WS_PING_TIMEOUT", "soon", "must be a number of seconds > 0"),
    ("RUSTY_WS_PING_INTERVAL", -1, "must be a number of seconds >= 0"),
    ("RUSTY_WS_BROKER_RETRY_TIMEOUT", -1, "must be a number of seconds >= 0"),
    ("RUSTY_WS_BROKER_RETRY_TIMEOUT", "later", "must be a number of seconds >= 0"),
    ("RUSTY_WS_HISTORY_SIZE", float("nan"), "must be a whole number >= 0"),
    ("RUSTY_WS_COMPRESSION", "fast", "must be a zlib level from 1 to 9, or 0 for off"),
    ("RUSTY_WS_HEALTHZ", "lots", "must be one of full, minimal, off"),
    ("RUSTY_WS_REQUIRE_AUTH", "maybe", "must be true or false"),
    ("RUSTY_WS_SERVE_PAGE", 2, "must be true or false"),
    ("RUSTY_WS_CORS_ORIGINS", 5, "must be '*' or a list of origins"),
    ("RUSTY_WS_ALLOWED_HOSTS", 5, "must be '*' or a list of host names"),
    ("RUSTY_WS_USERS_FILE", 5, "must be the path of a file"),
    ("JWT_EXPIRATION_SECONDS", "soon", "must be a whole number > 0"),  # an alias is named as given
])
def test_a_bad_setting_is_one_line_naming_it_its_value_and_what_is_expected(
        key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_config({key: value})
    error = caught.value
    assert str(error).startswith(f"{key}={value!r}: {expected}"), str(error)
    assert "\n" not in str(error)
    assert (error.setting, error.expected) == (key, str(error).split(": ", 1)[1])
    assert error.value == value or value != value  # NaN is not equal to itself
    assert isinstance(error, ValueError)  # what init_app raised before ConfigError existed


@pytest.mark.parametrize("value, flag", [
    (True, True), (False, False), (1, True), (0, False), ("yes", True), ("Off", False), ("", False), (None, False),
])
def test_flags_take_the_usual_words(value: object, flag: bool) -> None:
    assert Settings.from_config({"RUSTY_WS_REQUIRE_AUTH": value}).require_auth is flag


def test_a_bad_broker_url_names_the_setting_and_masks_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        broker_from_url("carrier-pigeon://:hunter2@coop")
    assert str(caught.value) == ("RUSTY_WS_BROKER_URL='carrier-pigeon://:***@coop': names no broker rusty_ws "
                                 "knows: use memory:// or redis://host:port/db")
    with pytest.raises(ConfigError) as caught:
        broker_from_url("redis://:hunter2@localhost:port/0")
    assert "hunter2" not in str(caught.value) and str(caught.value).startswith(
        "RUSTY_WS_BROKER_URL='redis://:***@localhost:port/0': is no Redis URL that works")


def test_ping_interval_zero_turns_keepalive_off() -> None:
    assert Settings.from_config({"RUSTY_WS_PING_INTERVAL": 0}).ping_interval == 0


@pytest.mark.parametrize("key", ["RUSTY_WS_MAX_CONNECTIONS", "RUSTY_WS_MAX_SUBSCRIPTIONS", "RUSTY_WS_MAX_MESSAGE_SIZE"])
def test_counts_must_be_whole_numbers(key: str) -> None:
    with pytest.raises(ValueError, match="whole number"):
        Settings.from_config({key: 0.5})


def test_empty_origin_list_allows_only_the_hubs_own_origin() -> None:
    settings = Settings.from_config({"RUSTY_WS_CORS_ORIGINS": ""})
    assert settings.cors_origins == ()
    assert settings.origin_allowed("http://127.0.0.1:8081", host="127.0.0.1:8081")
    assert not settings.origin_allowed("http://127.0.0.1:8080", host="127.0.0.1:8081")
    assert settings.origin_allowed(None, host="127.0.0.1:8081")


def test_empty_environment_values_count_as_unset() -> None:
    found = config_from_environ({"RUSTY_WS_JWT_SECRET_KEY": "", "JWT_SECRET_KEY": "seed-secret"})
    assert found == {"RUSTY_WS_JWT_SECRET_KEY": "seed-secret"}


@pytest.mark.parametrize("value, level", [(0, 0), (False, 0), (1, 1), (9, 9), ("6", 6), (True, 1)])
def test_compression_is_a_zlib_level_or_off(value: object, level: int) -> None:
    assert Settings.from_config({"RUSTY_WS_COMPRESSION": value}).compression == level


class TestAuthorizationSettings:
    def test_defaults(self) -> None:
        settings = Settings.from_config({})
        assert settings.anonymous_sessions == ("*",)
        assert settings.server_only_topics == ()
        assert settings.trusted_proxies == ()
        assert (settings.auth_timeout, settings.token_expiry_grace) == (5.0, 0.0)
        assert (settings.login_max_failures_per_address, settings.login_max_failures_per_user_address,
                settings.login_window) == (20, 5, 60.0)

    @pytest.mark.parametrize("value", ["public-*, lobby", '["public-*", "lobby"]', ["public-*", "lobby"],
                                       ("public-*", " lobby ", "")])
    def test_pattern_settings_take_a_list_or_a_comma_separated_string(self, value) -> None:
        for key in ("ANONYMOUS_SESSIONS", "SERVER_ONLY_TOPICS"):
            settings = Settings.from_config({f"RUSTY_WS_{key}": value})
            assert getattr(settings, key.lower()) == ("public-*", "lobby")

    def test_pattern_settings_from_the_environment(self) -> None:
        config = config_from_environ({"RUSTY_WS_ANONYMOUS_SESSIONS": "public-*,lobby",
                                      "RUSTY_WS_SERVER_ONLY_TOPICS": '["system.*"]',
                                      "RUSTY_WS_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
        settings = Settings.from_config(config)
        assert settings.anonymous_sessions == ("public-*", "lobby")
        assert settings.server_only_topics == ("system.*",)
        assert [str(network) for network in settings.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]

    @pytest.mark.parametrize("key, value", [
        ("ANONYMOUS_SESSIONS", 5), ("ANONYMOUS_SESSIONS", "[not json"), ("SERVER_ONLY_TOPICS", [1]),
        ("TRUSTED_PROXIES", "proxy.example"), ("AUTH_TIMEOUT", 0), ("TOKEN_EXPIRY_GRACE", -1),
        ("LOGIN_WINDOW", -1), ("LOGIN_MAX_FAILURES_PER_ADDRESS", 1.5), ("LOGIN_MAX_TRACKED", 0),
    ])
    def test_refusals_name_the_key(self, key: str, value) -> None:
        with pytest.raises(ValueError, match=key):
            Settings.from_config({f"RUSTY_WS_{key}": value})
