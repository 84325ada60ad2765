"""Least-privilege Redis ACL rules for the services of one bus (``celery eventbus acl``).

Each service gets one Redis user whose rules let it do what a service of the bus does and
little else:

- **its own keys, fully**: its queues (and kombu's priority sub-queues of them), kombu's
  binding set of each, its registry record, its lost-delivery ledger and sweeper lock, its
  dead letters and the inbox records of its handlers;
- **other services' queues and ledgers, append only**: Redis 7 selectors allowing only
  ``LPUSH`` on queues, ``HSETNX`` on ledgers and ``ZADD`` on their due sets (and ``TYPE``), with
  write-only key rights (``%W~``). The fan-out script takes those keys in ARGV (see ``backends/redis/fanout.py``), so
  each command in it is checked on its own and the script asks the ACL before its first write:
  a refused publish writes nothing. A service can therefore append a delivery, real or forged,
  to a subscriber's queue (signed events make the subscriber dead-letter a forged one), and
  cannot read, pop, delete, trim or rewrite it;
- **the registry, read; its own record, written**: every record and the service index may be
  read, only ``registry:{service}`` written, the index only added to (``SADD``);
- **shared keys the current layout cannot split** (written by every service, so any service
  may write them): the registry's ``version`` token and the event catalog, the delivery
  bookkeeping ``delivery:*`` and process alive keys ``alive:*``, kombu's ``unacked`` hash, its
  index and mutex, and the remote-control (pidbox) keys. What a service can do with them is
  listed in :data:`SHARED_KEYS`;
- **channels**: the task-event channels Flower listens on and the remote-control channel
  (Redis 7 gives a new user no channel rights, and the fan-out script PUBLISHes task-sent events).

Commands: everything but ``@dangerous`` (``FLUSHALL``, ``KEYS``, ``CONFIG``, ``DEBUG``,
``ACL``...), ``SCRIPT FLUSH``/``KILL`` and the ``FUNCTION`` family, which act on every service at
once; every command that names a key is still confined to the key patterns above.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["ServiceAccess", "SHARED_KEYS", "service_rules", "flower_rules", "operator_rules", "setuser_line"]

#: The shared keys every service may write, and what that lets one do to another.
SHARED_KEYS = {
    "version": "make every publisher reload the registry (costs reads, changes nothing)",
    "published": "add or change entries of the event catalog (what `catalog` shows only)",
    "delivery:*": "reset or inflate another service's retry and poison counters",
    "holders, held:*": "remove or add the records of which process holds which unacked message"
    " (the ledger's sweeper sends a delivery that is lost that way again)",
    "alive:*": "delete a live process's alive key, so that another copy takes over its lease"
    " (the handler may run twice; the inbox still skips it once done)",
    "unacked*": "remove kombu's unacked records (the ledger's sweeper sends such deliveries"
    " again) or add forged ones (delivered again like a forged push: signing refuses them)",
    "pidbox": "send or answer remote-control commands as any worker (Celery's own pidbox)",
}

# What a kombu priority sub-queue adds to a queue's name (kombu's Redis transport joins them
# with this separator); lines spell it "\x06\x16" (see _quoted).
_PRIORITY_SEP = "\x06\x16"
# Commands that affect every service at once: refused to services even though they name no key.
_DENIED = ("-@dangerous", "-script|flush", "-script|kill", "-function")


@dataclass(frozen=True)
class ServiceAccess:
    """What one service owns: its name, its queues and its handlers' task names."""

    service: str
    queues: tuple[str, ...]
    handlers: tuple[str, ...] = ()
    #: Queues of other services it publishes to that ``queue_pattern`` does not cover.
    other_queues: tuple[str, ...] = field(default=())
    #: The services it publishes to (whose ledgers its publishes append to).
    subscribers: tuple[str, ...] = field(default=())


def _glob(text: str) -> str:
    """``text`` as a literal in a Redis glob pattern."""
    out = []
    for char in text:
        if char in "*?[]\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _quoted(rule: str) -> str:
    """A rule as one argument of a redis-cli or aclfile line: as it is when it is plain, else in
    double quotes, where both read ``\\\\``, ``\\"`` and ``\\xHH`` as one character."""
    if all((c.isascii() and c.isalnum()) or c in "~%&+-@|:._/*<>=#^!$," for c in rule):
        return rule
    out = []
    for char in rule:
        if char in '\\"':
            out.append("\\" + char)
        elif char.isprintable() and ord(char) < 128:
            out.append(char)
        else:
            out.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8"))
    return '"' + "".join(out) + '"'


def service_rules(
    access: ServiceAccess,
    *,
    key_prefix: str = "celery_events:",
    queue_pattern: str = "events.*",
    global_keyprefix: str = "",
    db: int = 0,
) -> list[str]:
    """The ACL rules (after ``reset on >password``) of ``access.service``'s Redis user.

    ``queue_pattern`` covers every subscriber's queue it may append deliveries to (the
    bus's ``queue_template`` with ``{service}`` as ``*``), ``key_prefix`` is the bus's,
    ``global_keyprefix`` kombu's transport option, ``db`` the database number of the broker URL.
    """
    p, g = _glob(key_prefix), _glob(global_keyprefix)
    service = _glob(access.service)
    rules = ["resetkeys", "resetchannels", "-@all", "+@all", *_DENIED]
    # Its own queues: consume (BRPOP), restore and requeue (LPUSH), purge; kombu's priority
    # sub-queues of each, and the binding set the worker declares for each.
    for queue in access.queues:
        q = g + _glob(queue)
        rules += [f"~{q}", f"~{q}{_PRIORITY_SEP}*", *_bindings(g, _glob(queue))]
    # Its own registry record (written at worker start), ledger, dead letters and inbox.
    rules += [
        f"~{p}registry:{service}",
        f"~{p}ledger:{service}",
        f"~{p}ledger:{service}:due",
        f"~{p}dead:{service}",
        f"~{p}dead:{service}:index",
        # The lock that keeps one sweeper of its ledger running at a time.
        f"~{p}sweeper:{service}",
    ]
    # Its handlers' inbox leases and done markers: a handler's task name is "{service}.{name}",
    # and a service name has no '.', so these match its handlers and no other service's.
    rules += [f"~{p}inbox:{service}.*", f"~{p}done:{service}.*"]
    # Shared keys this layout cannot split per service (see SHARED_KEYS): the registry's
    # version token and the catalog (written with every registration and first publish of a
    # name), the delivery bookkeeping and alive keys (inbox.py, liveness.py), kombu's unacked
    # records (one hash for every queue of the Redis), and kombu's remote-control keys.
    rules += [
        f"~{p}version",
        f"~{p}published",
        f"~{p}delivery:*",
        f"~{p}alive:*",
        # Which process holds each unacked message (transport.py, liveness.py), for kombu's
        # unacked records of the same Redis.
        f"~{g}{p}holders",
        f"~{g}{p}held:*",
        f"~{g}unacked",
        f"~{g}unacked_index",
        f"~{g}unacked_mutex",
        # kombu's binding tables of the exchanges every app shares: Celery's default direct
        # exchange (the event queues are bound to it) and the remote-control ones.
        *_bindings(g, "celery"),
        f"~{g}_kombu.binding_deadlines",
        *_bindings(g, "celery.pidbox"),
        *_bindings(g, "reply.celery.pidbox"),
        *_bindings(g, "celeryev"),
        # Each worker's remote-control queue and the reply queues of inspect commands.
        f"~{g}*.celery.pidbox",
        f"~{g}*.celery.pidbox{_PRIORITY_SEP}*",
    ]
    # Reading the registry: every record, the index, and the hash of the layout before.
    rules += [f"%R~{p}registry:*", f"%R~{p}services", f"%R~{p}subscriptions"]
    # Channels: task and worker events (Flower's), and remote control (Celery's pidbox).
    rules += [f"&{g}/{db}.celeryev/*", f"&{g}/{db}.celery.pidbox"]
    # Appending to other services: the registry index (add only, so that no service can hide
    # another), and deliveries with their ledger entries. Nothing here can read, pop, delete,
    # trim or overwrite: LPUSH and HSETNX only add, ZADD may also move a due time (see the
    # threat model on the documentation's Security page).
    # Each command has a selector of its own, on keys of the one type it makes: a selector
    # that allowed HSETNX on a queue key, or LPUSH on a ledger key, would let a service create
    # a key of the wrong type where another's is missing, and every publish to that service
    # would then fail. So the ledgers are named one by one (a pattern 'ledger:*' would also
    # match the due sets 'ledger:*:due'): print the rules again when a service is added.
    queues = [f"%W~{g}{queue_pattern}", *(f"%W~{g}{_glob(q)}" for q in access.other_queues)]
    subscribers = sorted({*access.subscribers, access.service})
    rules.append(f"(+sadd %W~{p}services)")
    rules.append("(" + " ".join(["+lpush", "+type", *queues]) + ")")
    rules.append("(" + " ".join(["+hsetnx", "+type", *(f"%W~{p}ledger:{_glob(s)}" for s in subscribers)]) + ")")
    rules.append("(" + " ".join(["+zadd", "+type", *(f"%W~{p}ledger:{_glob(s)}:due" for s in subscribers)]) + ")")
    return rules


def _bindings(g: str, exchange: str) -> list[str]:
    """kombu's binding tables of ``exchange`` (kombu 5.7 keeps a permanent one beside each)."""
    return [f"~{g}_kombu.binding.{exchange}", f"~{g}_kombu.binding_permanent.{exchange}"]


def flower_rules(*, global_keyprefix: str = "", db: int = 0) -> list[str]:
    """Rules of the Redis user Flower runs as: it listens to task and worker events, asks
    workers through remote control and reads queue lengths; it cannot send tasks (no write
    right on any queue) nor read or write the bus's records."""
    g = _glob(global_keyprefix)
    return [
        "resetkeys",
        "resetchannels",
        "-@all",
        # Reading queue lengths for the broker page; subscribing to events; remote control.
        "+@connection",
        "+@pubsub",
        "+llen",
        "+sadd",
        "+smembers",
        "+srem",
        "+lpush",
        "+rpush",
        "+brpop",
        "+lpop",
        "+rpop",
        "+del",
        "+multi",
        "+exec",
        "+exists",
        "+info",
        f"%R~{g}*",
        *_bindings(g, "celeryev"),
        *_bindings(g, "reply.celery.pidbox"),
        *_bindings(g, "celery.pidbox"),
        f"~{g}*.reply.celery.pidbox",
        f"&{g}/{db}.celeryev/*",
        f"&{g}/{db}.celery.pidbox",
    ]


def operator_rules() -> list[str]:
    """Rules of the operator's user (``celery eventbus`` from a shell: migrate, replay, purge,
    status across services): every key and channel, nothing that reconfigures the server."""
    return ["resetkeys", "resetchannels", "-@all", "+@all", "-@dangerous", "+info", "+keys", "~*", "&*"]


def setuser_line(user: str, password: str, rules: Sequence[str]) -> str:
    """One ``ACL SETUSER`` line, as redis-cli reads it."""
    return " ".join(["ACL", "SETUSER", _quoted(user), "reset", "on", _quoted(f">{password}"), *map(_quoted, rules)])


def aclfile_line(user: str, password: str, rules: Iterable[str]) -> str:
    """One line of a Redis ``aclfile`` for ``user``."""
    return " ".join(["user", _quoted(user), "reset", "on", _quoted(f">{password}"), *map(_quoted, rules)])


def accesses(
    subscriptions: Iterable[tuple[str, str, str]],
    services: Sequence[str] = (),
    *,
    default_queue: str = "events.{service}",
) -> list[ServiceAccess]:
    """One :class:`ServiceAccess` per service, from ``(service, handler, queue)`` triples (the
    registry's subscriptions) and the names in ``services`` (all of the registry's when
    empty); a named service the registry lacks gets its default queue and no handler."""
    queues: dict[str, set[str]] = {}
    handlers: dict[str, set[str]] = {}
    for service, handler, queue in subscriptions:
        queues.setdefault(service, set()).add(queue)
        if handler:
            handlers.setdefault(service, set()).add(handler)
    wanted = list(services) or sorted(queues)
    pattern = default_queue.format(service="*")
    found = []
    for service in wanted:
        own = queues.get(service) or {default_queue.format(service=service)}
        others = sorted(
            {q for s, qs in queues.items() if s != service for q in qs if not _fnmatch(q, pattern)}
        )
        found.append(
            ServiceAccess(
                service,
                tuple(sorted(own)),
                tuple(sorted(handlers.get(service, ()))),
                tuple(others),
                tuple(sorted({*queues, *wanted})),
            )
        )
    return found


def _fnmatch(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)
