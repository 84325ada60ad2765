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

    >>> pattern_matches("order.#", "order")
    True
    """
    return _match_words(pattern.split("."), 0, name.split("."), 0)


def _match_words(pat: list[str], i: int, words: list[str], j: int) -> bool:
    while i < len(pat):
        word = pat[i]
        if word == "#":
            # '#' may swallow any number of words, including none.
            return any(_match_words(pat, i + 1, words, k) for k in range(j, len(words) + 1))
        if j >= len(words) or (word != "*" and word != words[j]):
            return False
        i += 1
        j += 1
    return j == len(words)


class _Node(Generic[T]):
    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.values: list[T] = []


class Matcher(Generic[T]):
    """Finds every value whose pattern matches an event name.

    Patterns are stored in a trie of words, so matching costs about the depth of the name,
    not the number of patterns; results are memoised per name because a service publishes
    few distinct names many times. A matcher is immutable once built: to change the patterns,
    build a new one.

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
            for word in pattern.split("."):
                node = node.children.setdefault(word, _Node())
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
        hash_node = node.children.get("#")
        if hash_node is not None:
            # '#' consumes words[j:k] for every k, including the empty run.
            for k in range(j, len(words) + 1):
                self._walk(hash_node, words, k, hits)
        if j == len(words):
            for value in node.values:
                hits[id(value)] = value
            return
        exact = node.children.get(words[j])
        if exact is not None:
            self._walk(exact, words, j + 1, hits)
        star = node.children.get("*")
        if star is not None:
            self._walk(star, words, j + 1, hits)
