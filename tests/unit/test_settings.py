import pytest

from celery_events import ConfigurationError, Settings
from celery_events.settings import validate_service_name


def test_defaults_are_valid() -> None:
    settings = Settings.from_options({})
    assert settings.max_event_size == 256 * 1024
    assert settings.publish_timeout == 5.0
    assert Settings.from_options({"relay_fanout_above": None}).relay_fanout_above is None


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
        ({"relay_fanout_above": 0}, "relay_fanout_above"),
        ({"relay_fanout_above": True}, "relay_fanout_above"),
        ({"relay_fanout_above": 2.5}, "relay_fanout_above"),
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


SECONDS_SETTINGS = [
    "publish_timeout",
    "registry_refresh_interval",
    "registry_max_staleness",
    "retry_backoff",
    "retry_backoff_max",
    "handler_time_limit",
    "inbox_ttl",
    "redelivery_timeout",
    "sweep_interval",
    "state_outage_wait",
]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 0.0001])
@pytest.mark.parametrize("name", SECONDS_SETTINGS)
def test_nan_infinity_and_sub_millisecond_durations_are_refused_at_creation(
    name: str, value: float
) -> None:
    # NaN passed `value <= 0`, and infinity or 0.1 ms failed later in a timer or in Redis
    # (durations become whole milliseconds there: PX 0 is an error)
    with pytest.raises(ConfigurationError, match=f"The setting {name} must be a finite, positive"):
        Settings.from_options({name: value})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e400, 2.0, "64"])
@pytest.mark.parametrize("name", ["max_event_size", "max_event_depth", "max_retries", "max_deliveries", "dead_letter_limit"])
def test_whole_number_settings_refuse_floats_nan_and_infinity(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"The setting {name} must be"):
        Settings.from_options({name: value})


def test_max_event_depth_is_capped_below_what_pickling_survives() -> None:
    assert Settings.from_options({"max_event_depth": 200}).max_event_depth == 200
    with pytest.raises(ConfigurationError, match="max_event_depth must be at most 200"):
        Settings.from_options({"max_event_depth": 500})


@pytest.mark.parametrize("value", [123, b"redis://x", ["redis://x"], ""])
def test_a_registry_url_that_is_not_a_url_string_is_refused(value: object) -> None:
    # 123 used to raise AttributeError ('int' object has no attribute 'startswith')
    with pytest.raises(ConfigurationError, match="The setting registry_url .* must be a redis://"):
        Settings.from_options({"registry_url": value})


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{svc}", "has the placeholder '{svc}'"),
        ("{service}.{x}", "has the placeholder '{x}'"),
        ("{", "has unbalanced braces"),
        ("events.{service", "has unbalanced braces"),
        ("events}.{service}", "has unbalanced braces"),
        ("{service!r}", "has the placeholder '{service!r}'"),
        ("{service:>5}", "has the placeholder '{service:>5}'"),
        ("{service[0]}", "has the placeholder '{service[0]}'"),
        ("{service.upper}", "has the placeholder '{service.upper}'"),
        ("{}", "has the placeholder '{}'"),
        ("{0}", "has the placeholder '{0}'"),
        ("events.{{service}}", "must contain '{service}'"),
        ("events", "must contain '{service}'"),
    ],
)
def test_a_queue_template_with_another_placeholder_or_bad_braces_is_refused(
    template: str, problem: str
) -> None:
    # These used to pass (or even contain "{service}") and fail later with KeyError,
    # ValueError or IndexError, or give every service the same queue
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_options({"queue_template": template})
    assert f"The setting queue_template {template!r} {problem}" in str(caught.value)


@pytest.mark.parametrize("template", ["events.{service}", "{service}", "q-{service}-{{x}}"])
def test_queue_templates_with_only_the_service_placeholder_are_accepted(template: str) -> None:
    assert Settings.from_options({"queue_template": template}).queue_template == template


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_template": 5}, "queue_template must be a string"),
        ({"key_prefix": 5}, "key_prefix must be a non-empty string"),
        ({"key_prefix": ""}, "key_prefix must be a non-empty string"),
        ({"task_events": 1}, "task_events must be True or False"),
        ({"retry_jitter": None}, "retry_jitter must be True or False"),
        ({"register_on_worker_start": "no"}, "register_on_worker_start must be True or False"),
    ],
)
def test_every_other_setting_of_the_wrong_type_is_refused_at_creation(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_options(options)
