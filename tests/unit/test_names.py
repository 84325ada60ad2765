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


def _reference_matches(pattern: str, name: str) -> bool:
    """AMQP topic matching written the plain recursive way (exponential, fine for tiny input)."""

    def match(pat: list[str], words: list[str]) -> bool:
        if not pat:
            return not words
        head, rest = pat[0], pat[1:]
        if head == "#":
            return any(match(rest, words[k:]) for k in range(len(words) + 1))
        return bool(words) and head in ("*", words[0]) and match(rest, words[1:])

    return match(pattern.split("."), name.split("."))


def _every_sequence(alphabet: list[str], longest: int) -> list[str]:
    found: list[str] = []
    layer = [[word] for word in alphabet]
    for _ in range(longest):
        found += [".".join(seq) for seq in layer]
        layer = [seq + [word] for seq in layer for word in alphabet]
    return found


def test_matching_agrees_with_the_reference_on_every_small_pattern_and_name() -> None:
    # Given every pattern of up to 4 words over a, b, * and # (340), and every name of up to
    # 4 words over a and b (30)
    patterns = _every_sequence(["a", "b", "*", "#"], 4)
    names = _every_sequence(["a", "b"], 4)
    matcher = Matcher([(p, i) for i, p in enumerate(patterns)])
    for name in names:
        expected = [i for i, p in enumerate(patterns) if _reference_matches(p, name)]
        # Then both matchers give exactly the reference's results, in insertion order
        assert [i for i, p in enumerate(patterns) if pattern_matches(p, name)] == expected, name
        assert matcher.match(name) == expected, name


def test_equivalent_wildcard_runs_all_match_and_keep_their_own_values() -> None:
    # '#.*', '*.#' and '#.#.*.#' all mean "one word or more": one trie path, three values.
    matcher = Matcher([("#.*", "x"), ("*.#", "y"), ("#.#.*.#", "z"), ("#.#", "w")])
    assert matcher.match("a") == ["x", "y", "z", "w"]
    assert matcher.match("a.b.c") == ["x", "y", "z", "w"]


def test_the_issue_s_pattern_against_a_40_word_name_is_matched_in_polynomial_time() -> None:
    # Given the pattern from the bug report and valid 40-word names (before the fix, one
    # match tried every split of the name among the eight '#': over 30 s)
    import time

    pattern = "#.#.#.#.#.#.#.#.zz"
    miss = ".".join(f"w{i}" for i in range(40))
    hit = ".".join(f"w{i}" for i in range(39)) + ".zz"
    validate_name(miss), validate_name(hit)
    subscriptions = [(pattern, "issue"), ("*.#.*.#.*.#.*.#.*.#", "stars"), ("#.w3.#.w7.#.zz", "mid")]
    started = time.perf_counter()
    # When it is matched, both by pattern_matches and by a matcher that has not seen the name
    assert pattern_matches(pattern, miss) is False
    assert pattern_matches(pattern, hit) is True
    assert Matcher(subscriptions).match(miss) == ["stars"]
    assert Matcher(subscriptions).match(hit) == ["issue", "stars", "mid"]
    # Then the answer comes at once: a bound 1,000 times above what it takes here, far below
    # the old minutes
    assert time.perf_counter() - started < 1.0
