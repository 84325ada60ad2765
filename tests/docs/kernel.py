"""A page's Python session: runs the code blocks it is sent, one namespace for the whole page.

Reads one JSON request per line on stdin, ``{"kind": "exec"|"doctest", "code", "name"}``, and
answers each with one line ``\\0SAMPLE {"ok", "output", "error"}`` on stdout. What the code
prints is captured into ``output``; anything else on stdout (a library's own writes to file
descriptor 1) comes before the answer and is shown if the block fails.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import doctest
import io
import json
import os
import sys
import traceback
import types
from typing import Any

sys.path.insert(0, os.getcwd())
namespace: dict[str, Any] = {"__name__": "__main__"}
loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
real_stdout = sys.stdout


def execute(code: str, name: str) -> None:
    compiled = compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if compiled.co_flags & 0x80:  # CO_COROUTINE: the block awaits at top level
        result = types.FunctionType(compiled, namespace)()
        loop.run_until_complete(result)
    else:
        exec(compiled, namespace)


def run_doctest(code: str, name: str) -> str | None:
    """Run the examples of ``code``; return the failures' report, or ``None``."""
    parser = doctest.DocTestParser()
    test = parser.get_doctest(code, namespace, name, name, 0)
    report = io.StringIO()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    runner.run(test, out=report.write, clear_globs=False)
    namespace.update(test.globs)  # a DocTest runs in a copy: keep what the examples defined
    return report.getvalue() if runner.failures else None


def answer(**reply: Any) -> None:
    real_stdout.write("\0SAMPLE " + json.dumps(reply) + "\n")
    real_stdout.flush()


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        output = io.StringIO()
        error = None
        try:
            with contextlib.redirect_stdout(output):
                if request["kind"] == "doctest":
                    error = run_doctest(request["code"], request["name"])
                else:
                    execute(request["code"], request["name"])
        except BaseException:  # noqa: BLE001 - the page shows whatever the sample raised
            error = traceback.format_exc()
        answer(ok=error is None, output=output.getvalue(), error=error or "")


if __name__ == "__main__":
    main()
