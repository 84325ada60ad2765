"""The Celery Request class of handler tasks (named by its path in the task options, so that
only a worker imports Celery's worker modules).

A delivery whose success record also acknowledged its broker message (the Redis inbox on the
broker's Redis: ``Inbox.acknowledges``) returns :data:`~._delivery.ACKED_WITH_SUCCESS`; its
request then tells the channel's QoS that the ack has nothing left to do, so the worker sends
no second round trip for it. The ack itself still runs through kombu (the message counts as
acknowledged, prefetch moves on); on any other transport, or if the word is lost, the ack is
sent as usual, and removing what the script already removed changes nothing.
"""

from __future__ import annotations

from typing import Any

from ._delivery import ACKED_WITH_SUCCESS
from .trust._request import MaskedRequest

__all__ = ["DeliveryRequest"]

# The prefork pool hands the parent the return value's repr; the other pools, the value.
_ACKED = frozenset({ACKED_WITH_SUCCESS, repr(ACKED_WITH_SUCCESS)})


class DeliveryRequest(MaskedRequest):
    """A delivery as the worker holds it (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acked_with_success = False
        # The worker's request class (Celery's create_request_cls) defines its own
        # on_success, which the pool calls: it is wrapped on the instance to read the reply.
        succeeded: Any = self.on_success  # type: ignore[has-type]

        def on_success(failed__retval__runtime: Any, **options: Any) -> Any:
            failed, retval, runtime = failed__retval__runtime
            if not failed and retval in _ACKED:
                self._acked_with_success = True
                failed__retval__runtime = (failed, repr(None), runtime)
            return succeeded(failed__retval__runtime, **options)

        self.on_success = on_success

    def acknowledge(self) -> None:
        if self._acked_with_success and not self.acknowledged:
            channel = getattr(self._message, "channel", None)
            settled = getattr(getattr(channel, "qos", None), "acked_with_success", None)
            if settled is not None:
                settled(self._message.delivery_tag)
        super().acknowledge()
