import pytest

from celery_events import InvalidEventName, InvalidPattern
from celery_events.names import Matcher, pattern_matches, validate_name, validate_pattern


@pytest.mark.parametrize("name", ["user", "user.registered", "order.line-item.added", "v2.x_y"])
def test_valid_names_are_returned(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "User.Registered", "user..registered", ".user", "user.", "user.*", "a b", 7, None]
)
def test_invalid_names_raise_a_typed_error_naming_the_value(name: object) -> None:
    with pytest.raises(InvalidEventName, match="event name"):
        validate_name(name)


def test_an_overlong_name_is_refused() -> None:
    with pytest.raises(InvalidEventName):
        validate_name("a" * 256)


@pytest.mark.parametrize("pattern", ["user.registered", "user.*", "order.#", "#", "*.created"])
def test_valid_patterns_are_returned(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", "user.**", "user.#x", "User.*", "user..x", 3])
def test_invalid_patterns_raise_a_typed_error(pattern: object) -> None:
    with pytest.raises(InvalidPattern, match="pattern"):
        validate_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("user.registered", "user.registered", True),
        ("user.registered", "user.deleted", False),
        ("user.*", "user.registered", True),
        ("user.*", "user", False),
        ("user.*", "user.a.b", False),
        ("order.#", "order", True),
        ("order.#", "order.created", True),
        ("order.#", "order.line.added", True),
        ("order.#", "orders.created", False),
        ("#", "anything.at.all", True),
        ("#.created", "created", True),
        ("#.created", "order.line.created", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("*.*", "a.b", True),
        ("*.*", "a", False),
        ("#.#", "a.b.c", True),
    ],
)
def test_pattern_matching_follows_amqp_topic_rules(pattern: str, name: str, expected: bool) -> None:
    assert pattern_matches(pattern, name) is expected
    assert (Matcher([(pattern, "hit")]).match(name) == ["hit"]) is expected


def test_matcher_returns_every_matching_value_once_in_insertion_order() -> None:
    matcher = Matcher(
        [("user.registered", "exact"), ("user.*", "star"), ("#", "all"), ("order.#", "order")]
    )
    assert matcher.match("user.registered") == ["exact", "star", "all"]
    assert matcher.match("order") == ["all", "order"]
    assert matcher.match("payment.failed") == ["all"]


def test_matcher_agrees_with_the_reference_matcher_on_many_patterns() -> None:
    import random

    rng = random.Random(7)
    words = ["a", "b", "c"]
    patterns = [
        ".".join(rng.choice(words + ["*", "#"]) for _ in range(rng.randint(1, 4)))
        for _ in range(300)
    ]
    matcher = Matcher([(p, i) for i, p in enumerate(patterns)])
    for _ in range(300):
        name = ".".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        expected = [i for i, p in enumerate(patterns) if pattern_matches(p, name)]
        assert matcher.match(name) == expected


def test_memoised_results_cannot_be_changed_by_callers() -> None:
    matcher = Matcher([("a", 1)])
    matcher.match("a").append(2)
    assert matcher.match("a") == [1]
