"""What a service says about the events it publishes: ``bus.declare(name, ...)``.

A declaration is made once per event name, at import time, next to the code that publishes
it. Today it names the event's sensitive fields; it is the place where a schema and a version
will go, so it is keyword-only and returns a :class:`Declaration` that may grow fields.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Declaration"]


@dataclass(frozen=True)
class Declaration:
    """One event name this service publishes, as ``bus.declare`` made it.

    >>> bus.declare("user.registered", sensitive=["email", "address.street"])  # doctest: +SKIP
    Declaration(name='user.registered', sensitive=('email', 'address.street'))
    """

    #: The event name (exact, not a pattern).
    name: str
    #: Dotted paths of the data's sensitive fields: masked in every argument text, encrypted
    #: when the service has ``encryption_keys``; they travel with each event as its
    #: ``sensitive`` extension attribute, so subscribers mask and decrypt the same ones.
    sensitive: tuple[str, ...] = ()
