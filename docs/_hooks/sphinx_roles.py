"""Griffe extension: the docstrings' reST roles (``:class:`Event```) as links of the site.

The package's docstrings cross-reference with Sphinx roles, which Markdown would show as
literal text. Each role becomes an optional autoref to the object it names (resolved as
Python would from the docstring's module, then from ``celery_events``): a link when the
reference documents that object, plain code when it does not, never a broken link.

The docstrings' other reST that Markdown would show wrongly is fenced: ``>>>`` examples as
``pycon`` blocks, and ``::`` literal blocks (the paragraph ending in ``::``, then an indented
block) as ``sh`` blocks when each line is a command, ``python`` ones when they parse as
Python, else ``text``; the ``::`` is shown as reST shows it (``:``, or nothing after a space).
"""

from __future__ import annotations

import ast
import re
import textwrap
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


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def fence_literal_blocks(text: str) -> str:
    """Put each reST literal block (after a line ending in ``::``) in a fence."""
    lines = text.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        following = next((i for i in range(index + 1, len(lines)) if lines[i].strip()), None)
        if (
            not line.rstrip().endswith("::")
            or line.lstrip().startswith(">>>")
            or following is None
            or following == index + 1
            or _indent(lines[following]) <= _indent(line)
        ):
            out.append(line)
            index += 1
            continue
        base = line[: _indent(line)]
        head = line.rstrip()[:-2]
        head = head.rstrip() if head.endswith((" ", "\t")) or not head.strip() else f"{head}:"
        if head.strip():
            out.append(head)
        end = following
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > _indent(line)):
            end += 1
        while not lines[end - 1].strip():
            end -= 1
        block = textwrap.dedent("\n".join(lines[following:end]))
        rows = [row for row in block.splitlines() if row.strip()]
        if all(row.startswith(("celery ", "python ", "manage.py ")) for row in rows):
            language = "sh"  # commands, as the CLI modules show them
        else:
            try:
                ast.parse(block)
                language = "python"
            except SyntaxError:
                language = "text"
        out.extend(["", f"{base}```{language}", *(f"{base}{row}".rstrip() for row in block.splitlines()), f"{base}```"])
        index = end
    return "\n".join(out)


def convert(obj: griffe.Object, text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        role, short, name = match.groups()
        shown = name.rsplit(".", 1)[-1] if short else name
        if role in ("meth", "func"):
            shown = f"{shown.removesuffix('()')}()"
        return f'<autoref optional identifier="{identifier(obj, name)}"><code>{shown}</code></autoref>'

    # ``code`` is reST's inline literal; Markdown's is one backtick. Examples stay verbatim.
    fenced = fence_literal_blocks(fence_examples(text))
    parts = re.split(r"(^[ \t]*```(?:pycon|python|text|sh)\n.*?^[ \t]*```$)", fenced, flags=re.M | re.S)
    return "".join(
        part if part.lstrip().startswith("```") else DOUBLE_BACKTICKS.sub(r"`\1`", ROLE.sub(replace, part))
        for part in parts
    )


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj, obj.docstring.value)
