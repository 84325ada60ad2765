"""The worker side of masking: a Celery task strategy that masks a delivery's argument text.

Apart from :mod:`.sensitive` because it uses the message builder's repr, which uses
:mod:`.sensitive`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _plainjson
from .._messages import fast_saferepr
from .fields import MASK, mask_envelope

__all__ = ["masking_strategy"]



class masking_strategy:  # noqa: N801 - used as Celery's Task.Strategy, a factory
    """A Celery task ``Strategy`` that masks ``paths`` (a subscriber's ``sensitive=``) and the
    envelope's own sensitive fields in each delivery's ``argsrepr`` header before Celery makes
    its Request: Celery's "received" and failure log lines, its ``task-received`` event (what
    Flower shows), ``celery inspect`` and the handler's retries all read that header.

    Only handlers with ``sensitive=`` get it: others pay nothing. (An object, not a function:
    a function in the task class would be bound as a method.)
    """

    def __init__(self, paths: tuple[str, ...]) -> None:
        self.paths = paths

    def __call__(self, task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
        from celery.worker.strategy import default

        paths = self.paths
        handle = default(task, app, consumer, **kwargs)
        maxsize = app.amqp.argsrepr_maxsize
        maxlevels = app.conf.task_repr_maxlevels

        def task_message_handler(message: Any, body: Any, *args: Any, **options: Any) -> Any:
            headers = message.headers
            if isinstance(headers, dict):
                try:
                    # The screening transport hands on the body it decoded already.
                    payload = message.body
                    if isinstance(payload, (str, bytes)):
                        payload = _plainjson.loads(payload)
                    arguments = payload[0]
                    masked = [
                        mask_envelope(item, paths) if type(item) is dict else item
                        for item in arguments
                    ]
                    text = fast_saferepr(masked, maxsize, maxlevels)
                except Exception:
                    # Not a delivery Celery can run (it refuses it next); show nothing of it.
                    text = f"[{MASK}]"
                headers["argsrepr"] = text
            return handle(message, body, *args, **options)

        return task_message_handler
