"""Every code sample of the documentation site (docs/), run against the test servers.

How a page's blocks are run, and the directives that steer them: tests/docs/samples.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..harness import free_port
from .samples import Addresses, Page, PageRun, SampleError, pages, parse, redis_pairs

PAGES = pages()
MARKS = {"rabbitmq": "rabbitmq", "rabbitmq-cluster": "rabbitmq", "sentinel": "sentinel",
         "postgres": "postgres"}


def _params() -> list[object]:
    params = []
    for page in PAGES:
        # MarkDecorators are not hashable: one per name, by name.
        names = sorted({MARKS[server] for server in page.servers if server in MARKS})
        marks = [getattr(pytest.mark, name) for name in names]
        params.append(pytest.param(page, id=page.name, marks=[pytest.mark.integration, *marks]))
    return params


def addresses_for(page: Page, request: pytest.FixtureRequest) -> Addresses:
    """Start (or reuse) the servers ``page`` asks for; the addresses its samples use for them.

    RabbitMQ (one node, and each node of the cluster) has the management plugin on a port of
    its own (tests/rabbitmq_managed.py, tests/docs/conftest.py): samples write it ``http://guest:guest@localhost:15672``
    (``rabbit1:15672`` .. ``rabbit3:15672`` on the cluster) and name it in ``management_url``,
    since the default (the broker's host, port 15672) is not where the test node has it.
    Passwords shown as ``***`` (in ``eventbus status``) are mapped back too. On Sentinel,
    ``redis-cli -p 26379`` .. ``26381`` reach the sentinels.
    """
    pairs: list[tuple[str, str]] = []
    redis_url = request.getfixturevalue("redis_url")  # every page has Redis, emptied
    pairs += redis_pairs(redis_url)
    if "rabbitmq" in page.servers:
        node = request.getfixturevalue("managed_rabbitmq")  # with the management plugin, emptied
        url = node.url.rstrip("/")
        for host in ("localhost", "127.0.0.1"):
            pairs.append((f"amqp://guest:guest@{host}:5672", url))
            pairs.append((f"amqp://guest:***@{host}:5672", url.replace(":guest@", ":***@")))
            pairs.append((f"http://guest:guest@{host}:15672", node.management_url))
            pairs.append((f"http://guest:***@{host}:15672", node.management_url.replace(":guest@", ":***@")))
            pairs.append((f"http://{host}:15672", f"http://127.0.0.1:{node.management_port}"))
    if "rabbitmq-cluster" in page.servers:
        cluster = request.getfixturevalue("docs_rabbitmq_cluster")
        for number, (node, port) in enumerate(zip(cluster.nodes, cluster.management_ports, strict=True)):
            pairs.append((f"amqp://guest:guest@rabbit{number + 1}:5672", node.url.rstrip("/")))
            pairs.append((f"amqp://guest:***@rabbit{number + 1}:5672", node.url.rstrip("/").replace(":guest@", ":***@")))
            pairs.append((f"http://guest:guest@rabbit{number + 1}:15672", f"http://guest:guest@127.0.0.1:{port}"))
            pairs.append((f"http://guest:***@rabbit{number + 1}:15672", f"http://guest:***@127.0.0.1:{port}"))
            pairs.append((f"http://rabbit{number + 1}:15672", f"http://127.0.0.1:{port}"))
    if "sentinel" in page.servers:
        topology = request.getfixturevalue("sentinel_topology")
        request.getfixturevalue("sentinel_url")  # every node up, emptied
        for number, sentinel in enumerate(topology.sentinels):
            pairs.append((f"sentinel://localhost:{26379 + number}", f"sentinel://127.0.0.1:{sentinel.port}"))
            pairs.append((f"redis-cli -p {26379 + number} ", f"redis-cli -p {sentinel.port} "))
    if "postgres" in page.servers:
        server = request.getfixturevalue("postgres_server")
        pairs.append(("postgresql://postgres@localhost:5432", f"postgresql://postgres@127.0.0.1:{server.port}"))
        pairs.append(("localhost:5432", f"127.0.0.1:{server.port}"))
    # A web server a page starts (uvicorn, flask run) listens on a free port, not the 8000 shown.
    web = free_port()
    for host in ("127.0.0.1", "localhost"):
        pairs.append((f"http://{host}:8000", f"http://127.0.0.1:{web}"))
    pairs.append(("--port 8000", f"--port {web}"))
    return Addresses(pairs, {port: free_port() for port in page.ports})


@pytest.mark.parametrize("page", _params())
def test_page_samples(page: Page, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Given a page of the site, when each of its samples runs in order, then each does what the
    page says it does."""
    addresses = addresses_for(page, request)
    run = PageRun(parse(page.path), tmp_path, addresses, dict(os.environ))
    run.run()
    for skipped in run.skipped:
        print(f"not run: {skipped}")


def test_a_skipped_sample_says_why(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- sample: skip -->\n```python\nraise SystemExit\n```\n")
    with pytest.raises(SampleError, match="needs a reason"):
        PageRun(parse(page), tmp_path, Addresses([]), dict(os.environ)).run()
