"""Griffe extension: the docstrings' reST roles (``:class:`Event```) as links of the site.

The package's docstrings cross-reference with Sphinx roles, which Markdown would show as
literal text. Each role becomes an optional autoref to the object it names (resolved as
Python would from the docstring's module, then from ``celery_events``): a link when the
reference documents that object, plain code when it does not, never a broken link.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|exc|data|mod|obj):`(~?)([^`<>]+?)`")
DOUBLE_BACKTICKS = re.compile(r"``([^`]+)``")


def _module_of(obj: griffe.Object) -> griffe.Object:
    current: Any = obj
    while current is not None and not current.is_module:
        current = current.parent
    return current if current is not None else obj


def _class_of(obj: griffe.Object) -> griffe.Object | None:
    current: Any = obj
    while current is not None and not current.is_module:
        if current.is_class:
            return current
        current = current.parent
    return None


def identifier(obj: griffe.Object, name: str) -> str:
    """The full path ``name`` names, as seen from ``obj``'s docstring."""
    name = name.strip().removesuffix("()")
    if name.startswith("."):
        module = _module_of(obj)
        package = module.path.rsplit(".", 1)[0] if not module.is_package else module.path
        return f"{package}{name}"
    if name.startswith("celery_events"):
        return name
    head = name.split(".", 1)[0]
    owner = _class_of(obj)
    if owner is not None and head in owner.members:
        return f"{owner.path}.{name}"
    module = _module_of(obj)
    if head in module.members:
        member = module.members[head]
        target = member.target_path if member.is_alias else member.path
        rest = name[len(head):]
        return f"{target}{rest}"
    return f"celery_events.{name}"


def fence_examples(text: str) -> str:
    """Put each run of doctest lines (``>>>`` to the next blank line) in a ``pycon`` fence."""
    out: list[str] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}```pycon")
            while index < len(lines) and lines[index].strip():
                out.append(lines[index])
                index += 1
            out.append(f"{indent}```")
            continue
        out.append(line)
        index += 1
    return "\n".join(out)


def convert(obj: griffe.Object, text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        role, short, name = match.groups()
        shown = name.rsplit(".", 1)[-1] if short else name
        if role in ("meth", "func"):
            shown = f"{shown.removesuffix('()')}()"
        return f'<autoref optional identifier="{identifier(obj, name)}"><code>{shown}</code></autoref>'

    # ``code`` is reST's inline literal; Markdown's is one backtick. Examples stay verbatim.
    parts = re.split(r"(^[ \t]*```pycon\n.*?^[ \t]*```$)", fence_examples(text), flags=re.M | re.S)
    return "".join(
        part if part.lstrip().startswith("```pycon") else DOUBLE_BACKTICKS.sub(r"`\1`", ROLE.sub(replace, part))
        for part in parts
    )


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj, obj.docstring.value)
