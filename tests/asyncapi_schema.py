"""The official AsyncAPI 3.0.0 JSON Schema, from the npm package ``@asyncapi/specs``.

The ``asyncapi_schema`` fixture reads it from a project-local cache
(``.test-cache/npm/``, git-ignored) and installs the pinned package there with npm the first
time. Without npm the tests that need it skip locally and fail in CI, as those that need
redis-server do. pytest processes started at once may all find the cache empty: each installs
into a directory of its own and renames it into place, and the first rename wins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from .harness import ROOT, missing

#: The @asyncapi/specs release the tests validate against (the newest 6.x).
SPECS_VERSION = "6.11.1"
CACHE = ROOT / ".test-cache" / "npm"
PACKAGE = Path("node_modules") / "@asyncapi" / "specs"
SCHEMA = PACKAGE / "schemas" / "3.0.0.json"
# In a schema, what these keywords hold is data: a "$ref" there is no reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples", "example"})


def _installed_version(prefix: Path) -> str | None:
    try:
        return str(json.loads((prefix / PACKAGE / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _install() -> None:
    npm = shutil.which("npm")
    if npm is None:
        missing("npm is not installed (apt-get install nodejs npm)")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix="npm-", dir=CACHE.parent))
    try:
        done = subprocess.run(
            [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(fresh),
             f"@asyncapi/specs@{SPECS_VERSION}"],
            capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0 or not (fresh / SCHEMA).is_file():
            missing(f"npm could not install @asyncapi/specs@{SPECS_VERSION}: {done.stderr[-500:]}")
        if CACHE.exists() and _installed_version(CACHE) != SPECS_VERSION:
            # An older pin: set it aside (another process may do the same; either wins).
            stale = Path(tempfile.mkdtemp(prefix="stale-", dir=CACHE.parent))
            try:
                os.rename(CACHE, stale / "npm")
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(fresh, CACHE)
        except OSError:
            pass  # another process renamed its copy first: the same pinned package
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


@pytest.fixture(scope="session")
def asyncapi_schema() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 JSON Schema (draft 7, its definitions bundled in)."""
    if _installed_version(CACHE) != SPECS_VERSION or not (CACHE / SCHEMA).is_file():
        _install()
    schema: dict[str, Any] = json.loads((CACHE / SCHEMA).read_text())
    return schema


def asyncapi_errors(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Why ``document`` is not a valid AsyncAPI 3.0.0 document (empty: it is), including
    every local ``$ref`` that points nowhere."""
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message[:300]}"
        for error in validator.iter_errors(document)
    ]
    errors.extend(f"{ref}: points nowhere" for ref in _dangling_refs(document, document))
    # An operation's messages must be messages of its own channel (the JSON Schema cannot
    # say so).
    for key, operation in document.get("operations", {}).items():
        channel = operation["channel"]["$ref"]
        errors.extend(
            f"operations/{key}: {m['$ref']} is not a message of {channel}"
            for m in operation.get("messages", [])
            if not m["$ref"].startswith(f"{channel}/messages/")
        )
    return errors


def _dangling_refs(node: Any, document: dict[str, Any]) -> list[str]:
    found = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#") and not _resolves(ref, document):
            found.append(ref)
        for key, value in node.items():
            if key not in _DATA_KEYWORDS:
                found.extend(_dangling_refs(value, document))
    elif isinstance(node, list):
        for item in node:
            found.extend(_dangling_refs(item, document))
    return found


def _resolves(ref: str, document: dict[str, Any]) -> bool:
    node: Any = document
    for part in ref[2:].split("/") if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def payload_validator(document: dict[str, Any], message: str) -> jsonschema.Validator:
    """A validator of envelopes against ``components/messages/{message}/payload``, its
    references resolved inside ``document`` (declared schemas are JSON Schema 2020-12)."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:asyncapi-document", Resource(document, DRAFT202012)
    )
    pointer = f"urn:asyncapi-document#/components/messages/{message}/payload"
    return jsonschema.Draft202012Validator({"$ref": pointer}, registry=registry)
