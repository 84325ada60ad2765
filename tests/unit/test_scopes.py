"""Publish and subscribe scopes: the policy's semantics, its settings, and its enforcement on
the memory backend (publish refused, register refused, registry subscriptions filtered,
deliveries refused on receipt)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import pytest
from celery import Celery

from celery_events import (
    ConfigurationError,
    Event,
    EventBus,
    Middleware,
    PublishNotAllowed,
    PublishResult,
    SubscriptionNotAllowed,
)
from celery_events.backends import memory
from celery_events.middleware import PublishCall, PublishNext
from celery_events.names import pattern_matches
from celery_events.settings import Settings
from celery_events.testing import HandlerRunner
from celery_events.trust import middleware_for
from celery_events.trust.scopes import (
    Policy,
    Scopes,
    common_name,
    policy_for,
    refused_subscription,
    uncovered_name,
)

SCOPED = {
    "publish_scopes": {"payments": ["payments.#"], "shop": ["order.*"], "silent": []},
    "subscribe_scopes": {"ledger": ["payments.refund.*", "order.#"]},
    "protected_names": ["payments.#"],
}


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    memory.reset()
    yield
    memory.reset()


def policy() -> Policy:
    found = policy_for(Settings.from_options(SCOPED))
    assert found is not None
    return found


# -- the semantics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "name", "allowed"),
    [
        # listed: only what its patterns match
        ("payments", "payments.refunded", True),
        ("payments", "payments", True),
        ("payments", "order.created", False),
        ("shop", "order.created", True),
        ("shop", "order.line.added", False),
        ("silent", "anything", False),  # listed with [] : nothing at all
        # not listed: anything but a protected name
        ("mailer", "order.created", True),
        ("mailer", "payments.refunded", False),
        ("mailer", "payments", False),
        # a listed service not granted the protected name
        ("shop", "payments.refunded", False),
    ],
)
def test_who_may_publish_what(service: str, name: str, allowed: bool) -> None:
    assert policy().may_publish(service, name) is allowed
    assert (policy().publish_refusal(service, name) is None) is allowed


@pytest.mark.parametrize(
    ("service", "pattern", "allowed"),
    [
        ("ledger", "payments.refund.created", True),
        ("ledger", "payments.refund.*", True),
        ("ledger", "order.#", True),
        ("ledger", "order.*.added", True),
        # could match payments.created, which payments.refund.* does not cover
        ("ledger", "payments.#", False),
        ("ledger", "payments.*", False),
        ("ledger", "#", False),
        # not listed: any pattern that can match no protected name
        ("mailer", "order.*", True),
        ("mailer", "user.#", True),
        ("mailer", "payments.#", False),
        ("mailer", "payments.refunded", False),
        ("mailer", "*", False),  # matches 'payments'
        ("mailer", "#", False),
        ("mailer", "*.refunded", False),  # matches 'payments.refunded'
    ],
)
def test_who_may_subscribe_to_what(service: str, pattern: str, allowed: bool) -> None:
    assert policy().may_subscribe(service, pattern) is allowed


def test_a_refusal_names_an_example_name_that_is_not_allowed() -> None:
    reason = policy().subscribe_refusal("ledger", "payments.#")
    assert reason is not None
    assert "'payments'" in reason and "['payments.refund.*', 'order.#']" in reason
    reason = policy().subscribe_refusal("mailer", "#")
    assert reason is not None and "protected names such as 'payments'" in reason


def test_no_scope_setting_means_no_policy_and_no_middleware() -> None:
    settings = Settings.from_options({})
    assert policy_for(settings) is None
    assert middleware_for("shop", settings) == []
    assert refused_subscription(None, object()) is None  # type: ignore[arg-type]


def test_protected_names_alone_protect_them_from_every_service() -> None:
    only = Policy(None, None, ("payments.#",))
    assert not only.may_publish("payments", "payments.refunded")
    assert only.may_publish("payments", "order.created")
    assert not only.may_subscribe("ledger", "payments.*")


def test_a_policy_is_immutable() -> None:
    with pytest.raises(AttributeError):
        policy().protected_names = ()  # type: ignore[misc]
    scopes = {"shop": ["order.*"]}
    made = Policy(scopes)
    scopes["shop"].append("payments.#")
    scopes["evil"] = ["#"]
    assert not made.may_publish("shop", "payments.refunded")
    assert dict(made.publish_scopes or {}) == {"shop": ("order.*",)}
    with pytest.raises(TypeError):
        made.publish_scopes["evil"] = ("#",)  # type: ignore[index]


def test_scopes_is_the_outermost_trust_middleware() -> None:
    (first, *_) = middleware_for("shop", Settings.from_options(SCOPED))
    assert isinstance(first, Scopes) and first.service == "shop"


WORDS = ("a", "b", "x")
PATTERNS = ["#", "*", "a", "a.#", "a.*", "*.b", "a.b", "#.b", "a.#.b", "*.#", "a.*.#", "#.a.#"]


def names(max_words: int = 4) -> Iterator[str]:
    for n in range(1, max_words + 1):
        for words in itertools.product(WORDS, repeat=n):
            yield ".".join(words)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("scope", [[p] for p in PATTERNS] + [["a", "a.*.#"], ["*.b", "a.#"]])
def test_coverage_agrees_with_trying_every_short_name(pattern: str, scope: list[str]) -> None:
    # 'x' stands for a word no pattern names: trying it, a and b up to four words decides
    # these patterns (none has more than three tokens).
    uncovered = [
        n for n in names()
        if pattern_matches(pattern, n) and not any(pattern_matches(s, n) for s in scope)
    ]
    example = uncovered_name(pattern, scope)
    assert (example is None) == (not uncovered), (pattern, scope, uncovered[:3])
    if example is not None:
        assert pattern_matches(pattern, example)
        assert not any(pattern_matches(s, example) for s in scope)


@pytest.mark.parametrize(("left", "right"), list(itertools.product(PATTERNS, PATTERNS)))
def test_overlap_agrees_with_trying_every_short_name(left: str, right: str) -> None:
    both = [n for n in names() if pattern_matches(left, n) and pattern_matches(right, n)]
    example = common_name(left, right)
    assert (example is None) == (not both)
    if example is not None:
        assert pattern_matches(left, example) and pattern_matches(right, example)


def test_a_deep_hash_pattern_is_decided_quickly() -> None:
    pattern = ".".join(["#", "a"] * 12)
    assert uncovered_name(pattern, ["#.a"]) is None
    assert uncovered_name(pattern, [".".join(["*"] * 12) + ".#"]) is None
    assert uncovered_name(pattern, [".".join(["*"] * 13) + ".#"]) is not None


# -- the settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"publish_scopes": ["payments.#"]}, "['payments.#']"),
        ({"publish_scopes": {"Payments": ["payments.#"]}}, "'Payments'"),
        ({"publish_scopes": {"payments": "payments.#"}}, "publish_scopes['payments']"),
        ({"subscribe_scopes": {"ledger": ["payments..#"]}}, "'payments..#'"),
        ({"subscribe_scopes": {"ledger": [7]}}, "subscribe_scopes['ledger'] holds 7"),
        ({"protected_names": "payments.#"}, "'payments.#'"),
        ({"protected_names": ["payments.#", "Bad"]}, "protected_names holds 'Bad'"),
    ],
)
def test_bad_scope_settings_are_refused_naming_the_value(
    options: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_options(options)
    assert named in str(raised.value)


def test_scope_settings_are_kept_as_tuples() -> None:
    settings = Settings.from_options(SCOPED)
    assert settings.publish_scopes == {
        "payments": ("payments.#",), "shop": ("order.*",), "silent": ()
    }
    assert settings.protected_names == ("payments.#",)


# -- enforcement on the memory backend -------------------------------------------------------


def make_bus(service: str, **settings: object) -> EventBus:
    app = Celery(service, broker="memory://", set_as_current=False)
    return EventBus(app, service=service, **settings)


def test_a_publish_outside_the_scopes_raises_and_sends_nothing() -> None:
    # Given a subscriber to payments (granted) and a publisher not granted them
    ledger = make_bus("ledger", **SCOPED)

    @ledger.subscribe("payments.refund.*")
    def on_refund(event: Event) -> None: ...

    ledger.register()
    shop = make_bus("shop", **SCOPED)
    # When the shop publishes a protected name, or one outside its scope
    for name in ("payments.refund.created", "order.line.added"):
        with pytest.raises(PublishNotAllowed) as raised:
            shop.publish(name, {"id": 1})
        message = str(raised.value)
        # Then it is told who, what and which setting to change, and nothing was queued
        assert "'shop'" in message and repr(name) in message
        assert "publish_scopes['shop']" in message and "Nothing was sent" in message
    assert HandlerRunner().work(ledger) == []
    # While a granted publisher's event is delivered
    payments = make_bus("payments", **SCOPED)
    assert len(payments.publish("payments.refund.created", {"id": 1}).deliveries) == 1


def test_register_refuses_a_subscription_outside_the_scopes() -> None:
    bus = make_bus("mailer", **SCOPED)

    @bus.subscribe("payments.#")
    def snoop(event: Event) -> None: ...

    with pytest.raises(SubscriptionNotAllowed) as raised:
        bus.register()
    assert "'mailer'" in str(raised.value) and "'payments.#'" in str(raised.value)
    assert "subscribe_scopes['mailer']" in str(raised.value)
    assert make_bus("reader").registry.subscriptions() == []


def test_a_stranger_registered_to_a_protected_name_gets_no_delivery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a service with no policy of its own (the stranger) registered to payments.#
    evil = make_bus("evil")

    @evil.subscribe("payments.#")
    def steal(event: Event) -> None: ...

    evil.register()
    ledger = make_bus("ledger", **SCOPED)

    @ledger.subscribe("payments.refund.*")
    def on_refund(event: Event) -> None: ...

    ledger.register()
    # When payments, whose policy protects payments.#, publishes twice
    payments = make_bus("payments", **SCOPED)
    with caplog.at_level(logging.WARNING, "celery_events"):
        for _ in range(2):
            result = payments.publish("payments.refund.created", {"id": 1})
            # Then only the granted subscriber gets a delivery, and the refusal is logged once
            assert [d.service for d in result.deliveries] == ["ledger"]
    refusals = [r for r in caplog.records if "evil.steal" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert [r.handler for r in HandlerRunner().work(evil, ledger)] == ["ledger.on_refund"] * 2
    (stranger,) = [s for s in payments.registry.subscriptions() if s.service == "evil"]
    assert refused_subscription(payments.scope_policy, stranger) is not None


def test_a_delivery_from_a_service_not_allowed_to_publish_it_is_dead_lettered() -> None:
    ledger = make_bus("ledger", **SCOPED)
    ran: list[str] = []

    @ledger.subscribe("payments.refund.*")
    def on_refund(event: Event) -> None:
        ran.append(event.id)

    forged = Event.create("payments.refund.created", {"amount": 100}, source="shop")
    (run,) = HandlerRunner().run(ledger, forged)
    assert run.status == "dead_lettered" and run.reason == "not_allowed"
    assert ran == []
    (letter,) = ledger.dead_letters.list()
    assert letter.reason == "not_allowed" and "'shop'" in letter.error_message
    assert letter.envelope["source"] == "shop"
    genuine = Event.create("payments.refund.created", {"amount": 100}, source="payments")
    assert [r.status for r in HandlerRunner().run(ledger, genuine)] == ["succeeded"]
    assert len(ran) == 1
    # And the refused delivery cannot be replayed into the handler: the letter is kept
    with pytest.raises(PublishNotAllowed, match="cannot be replayed"):
        ledger.dead_letters.replay(letter.id)
    assert [kept.id for kept in ledger.dead_letters.list()] == [letter.id]


class Deferring(Middleware):
    """Puts every publish aside, as publish-on-commit and the outbox do."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        self.seen.append(call.event.name)
        return PublishResult(call.event, deferred=True)


def test_a_refused_publish_raises_before_any_middleware_can_defer_it() -> None:
    # Given a publisher whose middleware defers (a commit hook, an outbox)
    deferring = Deferring()
    app = Celery("shop", broker="memory://", set_as_current=False)
    shop = EventBus(app, service="shop", middleware=[deferring], **SCOPED)
    # Then a refused name raises in the caller, never later in a relay
    with pytest.raises(PublishNotAllowed):
        shop.publish("payments.refund.created", {"id": 1})
    assert deferring.seen == []
    assert shop.publish("order.created", {"id": 1}).deferred
    assert deferring.seen == ["order.created"]


def test_an_event_claiming_another_source_is_checked_for_both() -> None:
    payments = make_bus("payments", **SCOPED)
    forged = Event.create("order.created", {"id": 1}, source="shop")
    # shop may publish order.*, but payments, which sends it, may not
    with pytest.raises(PublishNotAllowed, match="'payments'"):
        payments.publish_event(forged)
