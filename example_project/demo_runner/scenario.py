"""The demo's story, driven over HTTP, and the checks that every expected effect happened.

1. Four people register with the users service (``POST /users``). Each ``user.registered``
   goes to orders (a welcome order, announced with ``order.created`` from inside the handler)
   and to notifications (an audit line); each ``order.created`` goes back to users (which
   notes the order) and to notifications (a confirmation e-mail whose mail relay times out on
   the first tries for some users, so the delivery is retried).
2. One of them leaves (``DELETE /users/<id>``): ``user.deleted`` reaches the audit trail and
   the goodbye SMS, which always fails while the SMS gateway is down: after two retries the
   delivery becomes a dead letter of the notifications service.
3. (``--once``) The gateway is brought up and the dead letter replayed: the SMS goes out.
4. What the services observed: ``celery eventbus trace`` of the first user's registration
   (its deliveries and the ``order.created`` it caused, across the three services), the spans
   every process exported, and the notifications worker's Prometheus ``/metrics``.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import http, observed
from .flower import Flower
from .operate import Operator
from .stopping import STOP

PEOPLE = [
    ("ada@example.com", "Ada Lovelace"),
    ("grace@example.com", "Grace Hopper"),
    ("alan@example.com", "Alan Turing"),
    ("edsger@example.com", "Edsger Dijkstra"),
]
#: The person who leaves again.
LEAVER = PEOPLE[-1][0]
#: The handlers every user.registered must be delivered to.
SUBSCRIBERS_OF_REGISTERED = ["notifications.audit_trail", "orders.welcome_order"]
#: The handlers of the order.created each registration causes.
SUBSCRIBERS_OF_ORDER_CREATED = ["notifications.order_confirmation", "users.remember_welcome_order"]
#: The person who signs up through the FastAPI signup API (users/api.py: ``await
#: bus.apublish``) instead of the Flask app; their events are the same to every subscriber.
SIGNS_UP_ASYNC = PEOPLE[2][0]
#: The person whose registration the demo traces.
TRACED = PEOPLE[0][0]
#: The worker whose /metrics the demo reads.
SCRAPED = "notifications"


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


def expect(
    what: str, condition: Callable[[], tuple[bool, str]], timeout: float = 30.0
) -> Check:
    """Poll ``condition`` (returning ``(ok, detail)``) until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            ok, detail = condition()
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        if ok or time.monotonic() > deadline:
            return Check(what, ok, detail)
        STOP.sleep(0.2)


@dataclass
class Scenario:
    users_url: str
    orders_url: str
    data_dir: Path
    flower: Flower
    operator: Operator
    say: Callable[[str], None] = print
    #: The demo's Redis, read to check that it holds no sensitive value in clear.
    redis_url: str | None = None
    #: service -> the /metrics URL of its worker
    metrics_urls: dict[str, str] = field(default_factory=dict)
    #: The users service's FastAPI signup API (None: everyone registers through Flask).
    signups_url: str | None = None
    #: email -> (user id, id of its user.registered event)
    users: dict[str, tuple[int, str]] = field(default_factory=dict)
    deleted_event: str | None = None
    checks: list[Check] = field(default_factory=list)

    # -- reading what the services did ---------------------------------------------------

    def sent(self, kind: str) -> list[dict[str, Any]]:
        path = self.data_dir / "notifications.jsonl"
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [line for line in lines if line["kind"] == kind]

    def orders(self) -> dict[int, dict[str, Any]]:
        status, body = http.call("GET", f"{self.orders_url}/orders/")
        if status != 200:
            raise RuntimeError(f"GET /orders/ answered {status}")
        return {order["user_id"]: order for order in body["orders"]}

    def stored_users(self) -> dict[int, dict[str, Any]]:
        status, body = http.call("GET", f"{self.users_url}/users")
        if status != 200:
            raise RuntimeError(f"GET /users answered {status}")
        return {user["id"]: user for user in body["users"]}

    def record(self, check: Check) -> Check:
        STOP.check()  # between two steps of the story: stop here when told to
        self.checks.append(check)
        mark = "✓" if check.ok else "✗"
        self.say(f"  {mark} {check.what}" + (f": {check.detail}" if check.detail else ""))
        return check

    # -- the story -------------------------------------------------------------------------

    def run(self) -> None:
        self.say("Registering users over HTTP (POST /users; one through FastAPI, POST /signups):")
        routed = []
        for email, name in PEOPLE:
            if email == SIGNS_UP_ASYNC and self.signups_url is not None:
                url, via = f"{self.signups_url}/signups", " (FastAPI, apublish)"
            else:
                url, via = f"{self.users_url}/users", ""
            status, body = http.call("POST", url, {"email": email, "name": name})
            if status != 201:
                self.record(Check(f"POST {url} {email}", False, f"HTTP {status}: {body}"))
                continue
            event = body["event"]
            self.users[email] = (body["user"]["id"], event["id"])
            routed.append(sorted(event["deliveries"]) == SUBSCRIBERS_OF_REGISTERED)
            self.say(
                f"    {name:<16} user {body['user']['id']}, user.registered {event['id'][:8]}…"
                f" → {', '.join(event['deliveries'])}{via}"
            )
        self.record(
            Check(
                f"{len(PEOPLE)} users registered, each user.registered sent to orders and"
                " notifications",
                len(self.users) == len(PEOPLE) and all(routed),
            )
        )
        self.say("Waiting for the services to react:")
        self.record(expect("orders created one welcome order per user", self._orders_ok))
        self.record(
            expect(
                "orders handled each user.registered once (database inbox) and sent each"
                " order.created through its outbox",
                self._outbox_ok,
            )
        )
        self.record(expect("users noted each welcome order (order.created)", self._users_ok))
        self.record(
            expect("notifications e-mailed every order confirmation", self._emails_ok)
        )
        self.record(
            expect("the flaky mail relay's retries show in Flower", self._retries_ok)
        )
        self.record(
            expect(
                "Flower shows every user.registered with its email and name as ***",
                self._masked_in_flower,
            )
        )
        self.record(
            expect("every delivery Flower shows carries its publisher's signature", self._signed)
        )
        if self.redis_url is not None:
            self.record(
                Check(
                    "Redis holds no e-mail address or name in clear (encrypted fields)",
                    *self._clear_in_redis(),
                )
            )
        status = self.flower.metrics_status_without_auth()
        self.record(
            Check(
                "Flower's /metrics refuses a request without the password",
                status == 401,
                f"HTTP {status}",
            )
        )

        leaver_id = self.users[LEAVER][0] if LEAVER in self.users else 0
        status, body = http.call("DELETE", f"{self.users_url}/users/{leaver_id}")
        if status == 200:
            self.deleted_event = body["event"]["id"]
        self.say(f"User {leaver_id} leaves (DELETE /users/{leaver_id}): HTTP {status}")
        self.record(expect("every user event reached the audit trail (user.*)", self._audit_ok))
        self.record(
            expect(
                "the goodbye SMS failed 3 times and became a dead letter (the SMS gateway is down)",
                self._goodbye_dead,
            )
        )

    def replay(self) -> None:
        """Bring the SMS gateway up, replay the dead letter, and check that the SMS went out."""
        (self.data_dir / "sms-gateway-up").touch()
        self.say("The SMS gateway is up again; replaying the notifications' dead letters:")
        args = ("dead-letters", "replay", "--service", "notifications")
        self.say(f"  $ {self.operator.shown(*args)}")
        for line in self.operator.text(*args).splitlines():
            self.say(f"    {line}")
        self.record(expect("the replayed goodbye SMS was sent", self._sms_sent))
        self.record(
            expect(
                "no dead letter is left",
                lambda: (not self.operator.dead_letters(), ""),
            )
        )

    def observe(self) -> None:
        """Show the trace of one registration; check it, the spans and a worker's metrics."""
        if TRACED not in self.users:
            self.record(Check(f"the registration of {TRACED} to trace", False, "not registered"))
            return
        event_id = self.users[TRACED][1]
        self.say(f"The path of {TRACED}'s registration across the services:")
        args = ("trace", event_id)
        self.say(f"  $ {self.operator.shown(*args)}")
        # Shown once every delivery of the tree settled, so that what it prints is the end.
        check = expect(
            "the trace shows user.registered delivered to orders and notifications, and the"
            " order.created it caused delivered to users and notifications, all succeeded",
            lambda: observed.tree_succeeded(
                self.operator.json("trace", event_id),
                {
                    "user.registered": SUBSCRIBERS_OF_REGISTERED,
                    "order.created": SUBSCRIBERS_OF_ORDER_CREATED,
                },
            ),
        )
        if check.ok:
            for line in self.operator.text(*args).splitlines():
                self.say(f"    {line}")
        self.record(check)
        self.record(
            expect(
                "every service's processes exported their spans: send user.registered (users),"
                " process user.registered (orders, notifications), linked to it",
                lambda: observed.spans_of(
                    self.data_dir / "spans", event_id, ["orders", "notifications"]
                ),
            )
        )
        url = self.metrics_urls.get(SCRAPED, "")
        self.record(
            expect(
                f"the {SCRAPED} worker's {url} counts its deliveries by outcome",
                lambda: observed.deliveries_counted(
                    url,
                    SCRAPED,
                    {
                        ("notifications.audit_trail", "succeeded"): len(self.users)
                        + (1 if self.deleted_event else 0),
                        ("notifications.order_confirmation", "succeeded"): len(self.users),
                        ("notifications.order_confirmation", "retried"): self.expected_retries(),
                    },
                ),
            )
        )

    # -- conditions --------------------------------------------------------------------------

    def _orders_ok(self) -> tuple[bool, str]:
        orders = self.orders()
        missing = [e for e, (uid, _) in self.users.items() if uid not in orders]
        if missing:
            return False, f"no order yet for {', '.join(missing)}"
        wrong = [
            e for e, (uid, event_id) in self.users.items()
            if orders[uid]["cause_event_id"] != event_id
            or orders[uid]["correlation_id"] != event_id
        ]
        return not wrong, f"orders {sorted(o['id'] for o in orders.values())}" + (
            f"; wrong cause for {wrong}" if wrong else ""
        )

    def _outbox_ok(self) -> tuple[bool, str]:
        status, body = http.call("GET", f"{self.orders_url}/events/")
        if status != 200:
            raise RuntimeError(f"GET /events/ answered {status}")
        registered = {event_id for _, event_id in self.users.values()}
        handled = [r["event_id"] for r in body["inbox"] if r["handler"] == "orders.welcome_order"]
        sent = {r["causation_id"] for r in body["outbox"] if r["sent_at"]}
        emailed = {line["event_id"] for line in self.sent("email")}
        outbox_ids = {r["event_id"] for r in body["outbox"]}
        ok = (
            sorted(handled) == sorted(registered)
            and sent == registered
            and len(body["outbox"]) == len(registered)
            and emailed <= outbox_ids
        )
        return ok, f"{len(handled)} inbox rows, {len(sent)} outbox rows sent"

    def _users_ok(self) -> tuple[bool, str]:
        orders, stored = self.orders(), self.stored_users()
        pending = [
            e for e, (uid, _) in self.users.items()
            if uid not in orders or stored[uid]["welcome_order_id"] != orders[uid]["id"]
        ]
        return not pending, f"waiting for {', '.join(pending)}" if pending else ""

    def _emails_ok(self) -> tuple[bool, str]:
        emails = {line["user_id"]: line for line in self.sent("email")}
        missing = [e for e, (uid, _) in self.users.items() if uid not in emails]
        if missing:
            return False, f"no e-mail yet for {', '.join(missing)}"
        unchained = [
            e for e, (uid, event_id) in self.users.items()
            if emails[uid]["causation_id"] != event_id or emails[uid]["correlation_id"] != event_id
        ]
        if unchained:
            return False, f"order.created not caused by user.registered for {unchained}"
        return True, "each order.created names its user.registered as cause and correlation"

    def expected_retries(self) -> int:
        return sum(uid % 3 for uid, _ in self.users.values())

    def _retries_ok(self) -> tuple[bool, str]:
        stats = self.flower.deliveries().by_handler.get("notifications.order_confirmation")
        if stats is None:
            return False, "no order_confirmation delivery in Flower yet"
        expected = self.expected_retries()
        done = stats.states.get("SUCCESS", 0)
        detail = f"{stats.retries} retries (expected {expected}), {done} succeeded"
        return stats.retries == expected and done == len(self.users), detail

    def _signed(self) -> tuple[bool, str]:
        deliveries = [
            str(t.get("args")) for t in self.flower.tasks().values()
            if "'specversion'" in str(t.get("args"))
        ]
        signed = [a for a in deliveries if "'signature': '" in a and "'signaturekeyid': '" in a]
        return bool(deliveries) and len(signed) == len(deliveries), (
            f"{len(signed)} of {len(deliveries)} signed"
        )

    def _masked_in_flower(self) -> tuple[bool, str]:
        tasks = self.flower.tasks()
        registered = [
            str(t.get("args")) for t in tasks.values() if "'user.registered'" in str(t.get("args"))
        ]
        expected = len(self.users) * len(SUBSCRIBERS_OF_REGISTERED)
        masked = [a for a in registered if "'email': '***'" in a and "'name': '***'" in a]
        shown = json.dumps(tasks)
        leaked = [email for email, name in PEOPLE if email in shown or name in shown]
        detail = f"{len(masked)} of {expected} deliveries masked"
        if leaked:
            detail += f"; Flower shows {', '.join(leaked)}"
        return len(masked) == expected and not leaked, detail

    def _clear_in_redis(self) -> tuple[bool, str]:
        import redis

        client = redis.Redis.from_url(str(self.redis_url))
        try:
            stored = b"\n".join(_key_contents(client, key) for key in client.scan_iter(count=1000))
        finally:
            client.close()
        # kombu keeps a message's body base64-encoded inside its JSON: read those too.
        text = stored + b"\n".join(
            base64.b64decode(body) for body in re.findall(rb'"body": ?"([A-Za-z0-9+/=]{16,})"', stored)
        )
        leaked = [email for email, name in PEOPLE if email.encode() in text or name.encode() in text]
        return not leaked, (
            f"{len(stored)} bytes read" + (f"; in clear: {', '.join(leaked)}" if leaked else "")
        )

    def _audit_ok(self) -> tuple[bool, str]:
        seen = {line["event_id"] for line in self.sent("audit")}
        expected = {event_id for _, event_id in self.users.values()}
        if self.deleted_event:
            expected.add(self.deleted_event)
        return expected <= seen, f"{len(seen & expected)} of {len(expected)} events"

    def _goodbye_dead(self) -> tuple[bool, str]:
        stats = self.flower.deliveries().by_handler.get("notifications.goodbye_sms")
        failed = stats.states.get("FAILURE", 0) if stats else 0
        letters = self.operator.dead_letters()
        if not letters:
            return False, f"{failed} failed delivery in Flower, no dead letter yet"
        letter = letters[0]
        detail = (
            f"dead letter {letter['id'][:8]}…, {letter['reason']}, {letter['attempts']}"
            f" attempts, {letter['error_type']}"
        )
        ok = (
            len(letters) == 1
            and failed == 1
            and letter["handler"] == "notifications.goodbye_sms"
            and letter["event_id"] == self.deleted_event
            and letter["attempts"] == 3
        )
        return ok, detail

    def _sms_sent(self) -> tuple[bool, str]:
        sms = [line for line in self.sent("sms") if line["event_id"] == self.deleted_event]
        return len(sms) == 1, f"{len(sms)} SMS for event {str(self.deleted_event)[:8]}…"


def _key_contents(client: Any, key: bytes) -> bytes:
    """Everything a Redis key holds, as bytes (lists, hashes, sets, sorted sets, strings)."""
    kind = client.type(key)
    if kind == b"string":
        return client.get(key) or b""
    if kind == b"list":
        return b"\n".join(client.lrange(key, 0, -1))
    if kind == b"hash":
        return b"\n".join(k + b"=" + v for k, v in client.hgetall(key).items())
    if kind == b"set":
        return b"\n".join(client.smembers(key))
    if kind == b"zset":
        return b"\n".join(client.zrange(key, 0, -1))
    return b""
