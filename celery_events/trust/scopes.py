"""Publish and subscribe scopes: which services may publish and subscribe to which names.

The policy comes from each service's OWN settings, never from the shared registry (which
anyone with broker access could write):

>>> from celery import Celery
>>> from celery_events import EventBus
>>> bus = EventBus(Celery("orders", broker="memory://"), service="orders",
...                publish_scopes={"payments": ["payments.#"], "orders": ["order.#"]},
...                subscribe_scopes={"ledger": ["payments.#", "order.*"]},
...                protected_names=["payments.#"])
>>> bus.publish("payments.refunded", {"order_id": 7})
Traceback (most recent call last):
  ...
celery_events.errors.PublishNotAllowed: Event 'payments.refunded' was not published: service 'orders' may
not publish 'payments.refunded': its publish_scopes entry ['order.#'] does not cover it. ...

The rules, after Dapr's pub/sub scopes (``publishingScopes``, ``subscriptionScopes``,
``protectedTopics``), with the bus's own patterns (``*`` one word, ``#`` zero or more):

- a service listed in ``publish_scopes`` may publish only names one of its patterns matches
  (an empty list: nothing at all);
- a service not listed may publish any name but a protected one (one a pattern of
  ``protected_names`` matches);
- so a protected name may be published only by a listed service one of whose patterns
  matches it (a pattern such as ``#`` matches everything, protected names included);
- subscribing is the same with ``subscribe_scopes``. A subscription *pattern* is allowed only
  if every name it can match is allowed: ``payments.#`` against a scope ``["payments.refund.*"]``
  is refused (it would match ``payments.created``), ``payments.refund.*`` against a scope
  ``["payments.#"]`` is allowed. Decided exactly (an automaton search over the patterns'
  words), once per (service, pattern), and the refusal names an example name that is not
  allowed. A stranger's ``#`` is therefore refused whenever any name is protected: an audit
  service that wants every name is listed with ``["#"]``.

Where it is enforced:

- at publish: :class:`~celery_events.PublishNotAllowed`, nothing sent. Checked by the
  publish path before any middleware (so a refusal reaches the caller, never a commit hook or
  an outbox relay), and again by the :class:`Scopes` publish scope at send time; a replay is
  checked against its event's source. Both this service and the event's ``source``, if
  another, must be allowed;
- at ``bus.register()`` and worker start: :class:`~celery_events.SubscriptionNotAllowed`; the
  worker exits with status 1 before it consumes or says "ready". ``@bus.subscribe`` does not
  raise: it runs on import in every process that imports the handler (a web process, a
  shell, ``manage.py check``), which subscribes nothing until it registers or consumes;
  ``bus.check_subscriptions()`` checks at any time;
- on the publisher, against the registry: a subscription whose service may not subscribe to
  its pattern (by the publisher's policy) gets no delivery (logged once);
- on receipt (:meth:`Scopes.receive`): a delivery whose source may not publish its name, or
  whose name the receiving service may not subscribe to, by the RECEIVING service's policy,
  is dead-lettered with reason ``not_allowed`` before the inbox and the handler. The source
  checked is the envelope's ``source``: verified by its signature when signing is on (the
  signature is checked before this hook runs), merely claimed when it is off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..deadletters import Reason
from ..envelope import Event
from ..errors import DeliveryRefused, PublishNotAllowed, SubscriptionNotAllowed
from ..middleware.base import REPLAY, Middleware, PublishCall, PublishNext, Receipt
from ..names import Matcher, _canonical
from ..results import PublishResult

if TYPE_CHECKING:
    from ..registry import Subscription
    from ..settings import Settings

__all__ = ["Policy", "Scopes", "PublishGuard", "policy_for", "refused_subscription"]

log = logging.getLogger(__name__)

PUBLISH_SCOPES = "publish_scopes"
SUBSCRIBE_SCOPES = "subscribe_scopes"
PROTECTED_NAMES = "protected_names"


def _quoted(patterns: Iterable[str]) -> str:
    return "[" + ", ".join(repr(p) for p in patterns) + "]"


class _Side:
    """One direction of the policy (publishing or subscribing): the scopes of listed
    services and the protected patterns."""

    def __init__(
        self, setting: str, scopes: Mapping[str, tuple[str, ...]] | None, protected: tuple[str, ...]
    ) -> None:
        self.setting = setting
        self.scopes: dict[str, tuple[str, ...]] = dict(scopes or {})
        self.protected = protected
        self._matchers = {s: Matcher((p, p) for p in ps) for s, ps in self.scopes.items()}
        self._protected = Matcher((p, p) for p in protected)
        self._patterns: dict[tuple[str, str], str | None] = {}

    @property
    def restricts(self) -> bool:
        return bool(self.scopes) or bool(self.protected)

    def name_refusal(self, service: str, name: str, verb: str) -> str | None:
        """Why ``service`` may not ``verb`` event ``name``, or None if it may."""
        matcher = self._matchers.get(service)
        if matcher is not None:
            if matcher.match(name):
                return None
            return (
                f"service {service!r} may not {verb} {name!r}: its {self.setting} entry"
                f" {_quoted(self.scopes[service])} does not cover it"
            )
        hits = self._protected.match(name)
        if not hits:
            return None
        return (
            f"{name!r} is a protected name (protected_names pattern {hits[0]!r}) and service"
            f" {service!r} is not granted it: it has no {self.setting} entry"
        )

    def pattern_refusal(self, service: str, pattern: str, verb: str) -> str | None:
        """Why ``service`` may not ``verb`` ``pattern`` (some name it matches is not allowed),
        or None if every name it can match is allowed. Memoised: patterns are few."""
        key = (service, pattern)
        if key in self._patterns:
            return self._patterns[key]
        scope = self.scopes.get(service)
        reason: str | None = None
        if scope is not None:
            example = uncovered_name(pattern, scope)
            if example is not None:
                reason = (
                    f"service {service!r} may not {verb} {pattern!r}: it matches names such as"
                    f" {example!r} that its {self.setting} entry {_quoted(scope)} does not cover"
                )
        else:
            for protected in self.protected:
                example = common_name(pattern, protected)
                if example is not None:
                    reason = (
                        f"service {service!r} may not {verb} {pattern!r}: it matches protected"
                        f" names such as {example!r} (protected_names pattern {protected!r}) and"
                        f" service {service!r} has no {self.setting} entry granting them"
                    )
                    break
        self._patterns[key] = reason
        return reason


@dataclass(frozen=True)
class Policy:
    """Who may publish and subscribe to which names, from one service's own settings.

    Immutable; build it with :func:`policy_for` (validated settings) or directly.

    >>> from celery_events.trust.scopes import Policy
    >>> policy = Policy({"payments": ("payments.#",)}, None, ("payments.#",))
    >>> policy.may_publish("payments", "payments.refunded"), policy.may_publish("shop", "payments.refunded")
    (True, False)
    >>> policy.may_subscribe("ledger", "payments.#"), policy.may_subscribe("ledger", "order.*")
    (False, True)
    """

    #: ``{service: (pattern, ...)}``: the listed services and what each may publish.
    publish_scopes: Mapping[str, tuple[str, ...]] | None = None
    #: ``{service: (pattern, ...)}``: the listed services and what each may subscribe to.
    subscribe_scopes: Mapping[str, tuple[str, ...]] | None = None
    #: Patterns of names only services granted them (listed, with a pattern covering the
    #: name) may publish or subscribe to.
    protected_names: tuple[str, ...] = ()
    _publish: _Side = field(init=False, repr=False, compare=False)
    _subscribe: _Side = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Copies, read-only: a policy cannot be changed through the dicts it was made from.
        for name in ("publish_scopes", "subscribe_scopes"):
            scopes = getattr(self, name)
            if scopes is not None:
                frozen = MappingProxyType({s: tuple(ps) for s, ps in scopes.items()})
                object.__setattr__(self, name, frozen)
        protected = tuple(self.protected_names)
        object.__setattr__(self, "protected_names", protected)
        object.__setattr__(self, "_publish", _Side(PUBLISH_SCOPES, self.publish_scopes, protected))
        object.__setattr__(
            self, "_subscribe", _Side(SUBSCRIBE_SCOPES, self.subscribe_scopes, protected)
        )

    # -- publishing -----------------------------------------------------------------------

    def may_publish(self, service: str, name: str) -> bool:
        """Whether ``service`` may publish event ``name``."""
        return self._publish.name_refusal(service, name, "publish") is None

    def publish_refusal(self, service: str, name: str) -> str | None:
        """Why ``service`` may not publish ``name`` (a sentence fragment), or None."""
        return self._publish.name_refusal(service, name, "publish")

    # -- subscribing ----------------------------------------------------------------------

    def may_subscribe(self, service: str, pattern: str) -> bool:
        """Whether ``service`` may subscribe to ``pattern``: every name it can match must be
        allowed (an event name is a pattern matching only itself)."""
        return self._subscribe.pattern_refusal(service, pattern, "subscribe to") is None

    def subscribe_refusal(self, service: str, pattern: str) -> str | None:
        """Why ``service`` may not subscribe to ``pattern`` (a sentence fragment), or None."""
        return self._subscribe.pattern_refusal(service, pattern, "subscribe to")

    def may_receive(self, service: str, name: str) -> bool:
        """Whether ``service`` may subscribe to the one event name ``name`` (cheap: used per
        delivery)."""
        return self.receive_refusal(service, name) is None

    def receive_refusal(self, service: str, name: str) -> str | None:
        """Why ``service`` may not subscribe to the event name ``name``, or None."""
        return self._subscribe.name_refusal(service, name, "subscribe to")

    def check_subscriptions(self, service: str, patterns: Iterable[str]) -> None:
        """Raise :class:`~celery_events.SubscriptionNotAllowed` for the first of ``patterns``
        ``service`` may not subscribe to."""
        for pattern in patterns:
            reason = self.subscribe_refusal(service, pattern)
            if reason is not None:
                raise SubscriptionNotAllowed(
                    f"The subscription of service {service!r} to {pattern!r} is not allowed:"
                    f" {reason}. Add a pattern covering it to subscribe_scopes[{service!r}] in"
                    f" the settings of service {service!r}, or subscribe to a narrower pattern."
                )


def policy_for(settings: Settings) -> Policy | None:
    """The scopes policy of ``settings`` (validated), or None when no scope setting is set
    (nothing is checked, at no cost)."""
    if (
        settings.publish_scopes is None
        and settings.subscribe_scopes is None
        and not settings.protected_names
    ):
        return None
    return Policy(settings.publish_scopes, settings.subscribe_scopes, settings.protected_names)


class Scopes(Middleware):
    """Enforces a :class:`Policy` at publish and on receipt (see the module docstring).

    Added by :func:`celery_events.trust.middleware_for` when a scope setting is set, as the
    outermost of the trust middleware.
    """

    def __init__(self, service: str, policy: Policy) -> None:
        self.service = service
        self.policy = policy

    def check_publish(self, event: Event) -> None:
        """Raise :class:`~celery_events.PublishNotAllowed` unless this service (and the
        event's source, if another) may publish ``event``'s name."""
        for publisher in {self.service, event.source}:
            reason = self.policy.publish_refusal(publisher, event.name)
            if reason is not None:
                raise PublishNotAllowed(
                    f"Event {event.name!r} was not published: {reason}. Add a pattern"
                    f" covering it to publish_scopes[{publisher!r}] in the settings of service"
                    f" {self.service!r}, or publish another name. Nothing was sent."
                )

    def publish(self, call: PublishCall, call_next: PublishNext) -> PublishResult:
        event = call.event
        policy = self.policy
        if call.origin == REPLAY:
            # A replay sends another service's event again to one of this service's handlers:
            # what matters is whether its source may publish it (the receipt check).
            source = event.source
            reason = policy.publish_refusal(source, event.name)
            if reason is not None:
                raise PublishNotAllowed(
                    f"Event {event.id} ({event.name!r}) cannot be replayed: {reason}, by the"
                    f" settings of service {self.service!r}, so its handler would refuse it"
                    f" again. Change publish_scopes or protected_names of service"
                    f" {self.service!r} if {source!r} should publish it. Nothing was sent."
                )
            return call_next(call)
        # Checked before the chain too (the publish path); again here for what the
        # middleware outside this one may have changed.
        self.check_publish(event)
        return call_next(call)

    def receive(self, receipt: Receipt) -> Receipt:
        event = receipt.event
        policy = self.policy
        reason = policy.publish_refusal(event.source, event.name) or policy.receive_refusal(
            receipt.service, event.name
        )
        if reason is not None:
            raise DeliveryRefused(
                f"Event {event.id} from {event.source!r} was refused by service"
                f" {receipt.service!r}: {reason} (the publish_scopes, subscribe_scopes and"
                f" protected_names of service {receipt.service!r}).",
                reason=Reason.NOT_ALLOWED,
            )
        return receipt


class PublishGuard:
    """The scopes as the publish path of one service uses them: its publishes are checked
    before any middleware, and the registry subscriptions its policy forbids are dropped
    (each (service, pattern) logged once; decisions memoised per (service, pattern))."""

    def __init__(self, scopes: Scopes) -> None:
        self.check_publish = scopes.check_publish
        self.policy = scopes.policy
        self._allowed: dict[tuple[str, str], bool] = {}

    def allowed(self, subscriptions: list[Subscription]) -> list[Subscription]:
        """The subscriptions of ``subscriptions`` whose service may subscribe to their
        pattern, by this service's policy."""
        allowed = self._allowed
        kept = []
        for s in subscriptions:
            key = (s.service, s.pattern)
            ok = allowed.get(key)
            if ok is None:
                reason = self.policy.subscribe_refusal(s.service, s.pattern)
                ok = allowed[key] = reason is None
                if not ok:
                    log.warning(
                        "celery-events: the registry subscription of %s (%s) to %r is refused"
                        " by this service's scopes and gets no delivery: %s",
                        s.service, s.handler, s.pattern, reason,
                    )
            if ok:
                kept.append(s)
        return kept


def refused_subscription(policy: Policy | None, subscription: Subscription) -> str | None:
    """Why ``policy`` gives a registry ``subscription`` no delivery, or None (also when there
    is no policy): what ``celery eventbus subscriptions`` shows."""
    if policy is None:
        return None
    return policy.subscribe_refusal(subscription.service, subscription.pattern)


# -- pattern languages -----------------------------------------------------------------------
#
# A pattern is a small automaton over words: positions in its canonical token list, a literal
# or ``*`` consuming one word, ``#`` looping on any word and skippable. Names are over an
# infinite alphabet of words, but every pattern treats all the words it does not name alike,
# so a name that tells two patterns apart can always be rewritten with its unnamed words
# replaced by one fresh word. Searching the product automata over the named words plus one
# fresh word therefore decides inclusion and overlap exactly.

_FRESH = "\x00"  # not a valid word: stands for any word no pattern names


def _closure(pat: list[str], positions: Iterable[int]) -> frozenset[int]:
    closed = set()
    for i in positions:
        closed.add(i)
        while i < len(pat) and pat[i] == "#":
            i += 1
            closed.add(i)
    return frozenset(closed)


def _step(pat: list[str], positions: frozenset[int], word: str) -> frozenset[int]:
    reached = []
    for i in positions:
        if i == len(pat):
            continue
        token = pat[i]
        if token == "#":
            reached.append(i)
        elif token == "*" or token == word:
            reached.append(i + 1)
    return _closure(pat, reached)


def _search(
    pattern: str, others: Iterable[str], found: Callable[[list[bool]], bool]
) -> str | None:
    """A name ``pattern`` matches for which ``found(accepted)`` is true, where ``accepted`` is
    the list of booleans "``others[k]`` matches it"; None if there is none."""
    pat = _canonical(pattern.split("."))
    pats = [_canonical(o.split(".")) for o in others]
    words = sorted({w for p in [pat, *pats] for w in p if w not in ("*", "#")}) + [_FRESH]
    start = (_closure(pat, [0]), tuple(_closure(p, [0]) for p in pats))
    # A name has at least one word, so the start (the empty name) is never an answer, and
    # it is not marked seen: a name may lead back to the same positions.
    seen: set[tuple[frozenset[int], tuple[frozenset[int], ...]]] = set()
    frontier: list[tuple[tuple[frozenset[int], tuple[frozenset[int], ...]], list[str]]] = [
        (start, [])
    ]
    while frontier:
        following = []
        for (mine, theirs), path in frontier:
            if path and len(pat) in mine and found([len(p) in s for p, s in zip(pats, theirs, strict=True)]):
                return _shown_name(path, words)
            for word in words:
                nxt_mine = _step(pat, mine, word)
                if not nxt_mine:
                    continue
                state = (nxt_mine, tuple(_step(p, s, word) for p, s in zip(pats, theirs, strict=True)))
                if state not in seen:
                    seen.add(state)
                    following.append((state, [*path, word]))
        frontier = following
    return None


def _shown_name(path: list[str], words: list[str]) -> str:
    fresh = next(w for w in ("x", "y", "z", "other", "any") if w not in words)
    return ".".join(fresh if w == _FRESH else w for w in path) or "(the empty name)"


def uncovered_name(pattern: str, scope: Iterable[str]) -> str | None:
    """A name ``pattern`` matches that no pattern of ``scope`` matches, or None if ``scope``
    covers every name ``pattern`` can match.

    >>> from celery_events.trust.scopes import uncovered_name
    >>> uncovered_name("payments.#", ["payments.refund.*"])
    'payments'
    >>> uncovered_name("payments.refund.*", ["payments.#"]) is None
    True
    """
    return _search(pattern, list(scope), lambda accepted: not any(accepted))


def common_name(pattern: str, other: str) -> str | None:
    """A name both patterns match, or None if they match no name in common.

    >>> from celery_events.trust.scopes import common_name
    >>> common_name("#", "payments.#")
    'payments'
    >>> common_name("order.*", "payments.#") is None
    True
    """
    return _search(pattern, [other], lambda accepted: accepted[0])
