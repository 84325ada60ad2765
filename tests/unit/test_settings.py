import pytest

from celery_events import ConfigurationError, Settings
from celery_events.settings import validate_service_name


def test_defaults_are_valid() -> None:
    settings = Settings.from_options({})
    assert settings.max_event_size == 256 * 1024
    assert settings.publish_timeout == 5.0


def test_an_unknown_setting_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match="Did you mean 'publish_timeout'"):
        Settings.from_options({"publish_timout": 3})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"publish_timeout": 0}, "publish_timeout"),
        ({"publish_timeout": "5"}, "publish_timeout"),
        ({"max_event_size": -1}, "max_event_size"),
        ({"max_event_size": True}, "max_event_size"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"dead_letter_limit": 0}, "dead_letter_limit"),
        ({"inbox_ttl": 0}, "inbox_ttl"),
        ({"queue_template": "events"}, "queue_template"),
        ({"registry_url": "amqp://x"}, "registry_url"),
        ({"registry_refresh_interval": 2.0}, "registry_refresh_interval"),
        ({"require_subscribers": "yes"}, "require_subscribers"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_options(options)


@pytest.mark.parametrize("service", ["Orders", "", "a.b", None, "my service"])
def test_bad_service_names_are_refused(service: object) -> None:
    with pytest.raises(ConfigurationError, match="service name"):
        validate_service_name(service)
