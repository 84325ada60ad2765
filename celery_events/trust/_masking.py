"""The worker side of masking: a Celery task strategy that masks a delivery's argument text.

Apart from :mod:`.sensitive` because it uses the message builder's repr, which uses
:mod:`.sensitive`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .._messages import fast_saferepr
from .fields import MASK, mask_envelope

__all__ = ["masking_strategy"]



def masking_strategy(paths: tuple[str, ...]) -> Callable[..., Any]:
    """A Celery task ``Strategy`` that masks ``paths`` (a subscriber's ``sensitive=``) and the
    envelope's own sensitive fields in each delivery's ``argsrepr`` header before Celery makes
    its Request: Celery's "received" and failure log lines, its ``task-received`` event (what
    Flower shows), ``celery inspect`` and the handler's retries all read that header.

    Only handlers with ``sensitive=`` get it: others pay nothing.
    """

    def strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
        from celery.worker.strategy import default

        handle = default(task, app, consumer, **kwargs)
        maxsize = app.amqp.argsrepr_maxsize
        maxlevels = app.conf.task_repr_maxlevels

        def task_message_handler(message: Any, body: Any, *args: Any, **options: Any) -> Any:
            headers = message.headers
            if isinstance(headers, dict):
                try:
                    arguments = json.loads(message.body)[0]
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

    return strategy
