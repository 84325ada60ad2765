"""Event names, subscription patterns, and matching names against many patterns.

Names are dotted lowercase words: ``user.registered``. Patterns follow AMQP topic rules:
``*`` stands for exactly one word, ``#`` for zero or more words, so ``order.#`` matches
``order``, ``order.created`` and ``order.line.added``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Generic, TypeVar

from .errors import InvalidEventName, InvalidPattern

__all__ = ["validate_name", "validate_pattern", "pattern_matches", "Matcher"]

MAX_NAME_LENGTH = 255
_WORD = r"[a-z0-9][a-z0-9_-]*"
_NAME_RE = re.compile(rf"{_WORD}(?:\.{_WORD})*\Z")
_PATTERN_WORD_RE = re.compile(rf"(?:{_WORD}|\*|#)\Z")

T = TypeVar("T")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid event name, else raise :class:`InvalidEventName`.

    >>> from celery_events.names import validate_name
    >>> validate_name("user.registered")
    'user.registered'
    """
    if not isinstance(name, str):
        raise InvalidEventName(
            f"An event name must be a string, not {type(name).__name__} {name!r}."
        )
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        raise InvalidEventName(
            f"{name!r} is not a valid event name. Use dotted lowercase words of letters, digits,"
            f" '_' or '-', such as 'user.registered', at most {MAX_NAME_LENGTH} characters."
        )
    return name


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid subscription pattern, else raise :class:`InvalidPattern`.

    >>> from celery_events.names import validate_pattern
    >>> validate_pattern("user.*")
    'user.*'
    """
    if not isinstance(pattern, str):
        raise InvalidPattern(
            f"A subscription pattern must be a string, not {type(pattern).__name__} {pattern!r}."
        )
    if (
        not pattern
        or len(pattern) > MAX_NAME_LENGTH
        or not all(_PATTERN_WORD_RE.match(word) for word in pattern.split("."))
    ):
        raise InvalidPattern(
            f"{pattern!r} is not a valid subscription pattern. Use dotted lowercase words, '*' for"
            " exactly one word or '#' for zero or more words, such as 'user.registered',"
            " 'user.*' or 'order.#'."
        )
    return pattern


def pattern_matches(pattern: str, name: str) -> bool:
    """Tell whether ``name`` matches ``pattern`` (AMQP topic semantics).

    Costs at most (pattern words) × (name words) steps, whatever the pattern: the pattern is
    run as a set of positions, never by trying every split of the name among its ``#``.

    >>> from celery_events.names import pattern_matches
    >>> pattern_matches("order.#", "order")
    True
    """
    pat = _canonical(pattern.split("."))
    words = name.split(".")
    # Positions in the pattern reached after the words read so far.
    active = _pattern_closure(pat, {0})
    for word in words:
        reached = set()
        for i in active:
            if i == len(pat):
                continue
            token = pat[i]
            if token == "#":
                reached.add(i)  # '#' swallows this word and may swallow more.
            elif token == "*" or token == word:
                reached.add(i + 1)
        if not reached:
            return False
        active = _pattern_closure(pat, reached)
    return len(pat) in active


def _pattern_closure(pat: list[str], positions: set[int]) -> set[int]:
    """``positions`` plus those reached by letting a '#' match no word."""
    closed = set(positions)
    for i in sorted(positions):
        while i < len(pat) and pat[i] == "#":
            i += 1
            closed.add(i)
    return closed


def _canonical(pattern: list[str]) -> list[str]:
    """An equivalent pattern in which every run of wildcards is its ``*`` then at most one ``#``.

    A run of wildcards with ``s`` stars and at least one ``#`` matches ``s`` or more words,
    however they are ordered, so ``#.#.#`` is ``#`` and ``#.*.#`` is ``*.#``. Equivalent
    patterns then share one path in the matcher's trie, which bounds how many of its nodes one
    name can keep active.
    """
    out: list[str] = []
    stars, hashed = 0, False
    for word in pattern + [""]:
        if word == "*":
            stars += 1
        elif word == "#":
            hashed = True
        else:
            out += ["*"] * stars + (["#"] if hashed else [])
            stars, hashed = 0, False
            if word:
                out.append(word)
    return out


class _Node(Generic[T]):
    __slots__ = ("children", "values", "star", "hash")

    def __init__(self) -> None:
        #: Every child, by the pattern word leading to it: a literal word, ``*`` or ``#``.
        self.children: dict[str, _Node[T]] = {}
        self.values: list[T] = []
        #: The children behind ``*`` and ``#``, also kept apart because every match looks them up.
        self.star: _Node[T] | None = None
        self.hash: _Node[T] | None = None


class Matcher(Generic[T]):
    """Finds every value whose pattern matches an event name.

    Patterns are stored in a trie of words and a name is matched by moving the set of trie
    nodes it has reached one word at a time, so matching costs at most (name words) × (trie
    nodes) steps, and in practice about the depth of the name, not the number of patterns; no
    arrangement of ``#`` makes it exponential. Results are memoised per name because a service
    publishes few distinct names many times. A matcher is immutable once built: to change the
    patterns, build a new one.

    >>> from celery_events.names import Matcher
    >>> m = Matcher([("user.*", "a"), ("user.#", "b"), ("order.created", "c")])
    >>> m.match("user.registered")
    ['a', 'b']
    """

    def __init__(self, entries: Iterable[tuple[str, T]], memo_size: int = 4096) -> None:
        self._root: _Node[T] = _Node()
        self._order: dict[int, int] = {}
        self._memo: dict[str, list[T]] = {}
        self._memo_size = memo_size
        for position, (pattern, value) in enumerate(entries):
            node = self._root
            for word in _canonical(pattern.split(".")):
                child = node.children.get(word)
                if child is None:
                    child = node.children[word] = _Node()
                    if word == "*":
                        node.star = child
                    elif word == "#":
                        node.hash = child
                node = child
            node.values.append(value)
            self._order[id(value)] = position

    def match(self, name: str) -> list[T]:
        """Return the values whose pattern matches ``name``, each once, in insertion order."""
        found = self._memo.get(name)
        if found is None:
            hits: dict[int, T] = {}
            self._walk(self._root, name.split("."), 0, hits)
            found = sorted(hits.values(), key=lambda value: self._order[id(value)])
            if len(self._memo) >= self._memo_size:
                self._memo.clear()
            self._memo[name] = found
        return list(found)

    def _walk(self, node: _Node[T], words: list[str], j: int, hits: dict[int, T]) -> None:
        """Add to ``hits`` the values of every pattern below ``node`` matching ``words[j:]``.

        The nodes reached so far are kept in two sets. A node behind a ``#`` stays reached for
        every later word (the ``#`` swallows it), so it joins ``swallowing`` once, and its
        literal children are indexed by word: each later word costs one lookup for all of them.
        (In the canonical form a ``#`` is followed only by a literal word or the end.) The
        other reached nodes, ``current``, last one word each. Every node is visited at most once
        per word, so a match costs at most (name words) × (trie nodes) steps, whatever ``#`` and
        ``*`` the patterns hold.
        """
        swallowing: dict[int, _Node[T]] = {}
        behind: dict[str, list[_Node[T]]] = {}  # literal children of swallowing nodes
        joined: list[_Node[T]] = []  # swallowing since the last word, not yet in ``behind``

        def reach(found: _Node[T], into: dict[int, _Node[T]]) -> None:
            into[id(found)] = found
            swallower = found.hash
            if swallower is not None and id(swallower) not in swallowing:
                swallowing[id(swallower)] = swallower
                joined.append(swallower)

        def index_joined() -> None:
            # Their children can match from the next word on, not the one that reached them.
            for swallower in joined:
                for word, child in swallower.children.items():
                    behind.setdefault(word, []).append(child)
            joined.clear()

        current: dict[int, _Node[T]] = {}
        reach(node, current)
        index_joined()
        for word in words[j:]:
            following: dict[int, _Node[T]] = {}
            for child in behind.get(word, ()):
                reach(child, following)
            for reached in current.values():
                exact = reached.children.get(word)
                if exact is not None and exact is not reached.hash:
                    reach(exact, following)
                if reached.star is not None:
                    reach(reached.star, following)
            index_joined()
            current = following
            if not current and not swallowing:
                return
        for reached in (*current.values(), *swallowing.values()):
            for value in reached.values:
                hits[id(value)] = value
