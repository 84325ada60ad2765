"""Handlers whose parameter is a pydantic model: ``def welcome(user: UserRegistered)``.

The handler's signature is read once, when it is subscribed: a parameter annotated with a
pydantic v2 model gets the event's data parsed into that model, and one unannotated or
annotated ``Event`` gets the event (in any order, at most one of each). The model's schema is
what the handler accepts (its ``schema=`` unless one is given), so a delivery whose data breaks
it is dead-lettered ``schema_mismatch`` on receipt, before the handler runs.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Callable
from typing import Any

from ..envelope import Event
from ..errors import ConfigurationError, DeliveryRefused, SchemaError
from .schemas import Schema, schema_from

__all__ = ["EventCall", "read_signature"]

#: How a handler is called with one event: ``None`` for ``func(event)``.
EventCall = Callable[[Event], Any]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_SHAPES = (
    "def handler(event: Event), def handler(data: SomeModel) or"
    " def handler(event: Event, data: SomeModel)"
)


def read_signature(func: Callable[..., Any], where: str) -> tuple[EventCall | None, Schema | None]:
    """How to call ``func`` with an event, and the schema of its model parameter (if any).

    Returns ``(None, None)`` for a handler called as ``func(event)``. Raises
    :class:`ConfigurationError` for a signature no event can be passed to.
    """
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None, None  # a callable without a signature (a builtin): called with the event
    parameters = list(signature.parameters.values())
    needed = [
        p for p in parameters if p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is p.empty
    ]
    if needed:
        raise ConfigurationError(
            f"{where}: the handler needs keyword argument {needed[0].name!r}, which no delivery"
            f" gives; a handler is {_SHAPES}."
        )
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    hints = _hints(func, positional, where)
    models = [p for p in positional if _is_model(hints.get(p.name))]
    if not models:
        required = [p for p in positional if p.default is p.empty]
        takes_more = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters)
        if len(required) > 1 or not (positional or takes_more):
            raise ConfigurationError(
                f"{where}: the handler takes {len(required)} positional argument(s); it gets one"
                f" event: a handler is {_SHAPES}."
            )
        return None, None
    if len(models) > 1:
        raise ConfigurationError(
            f"{where}: parameters {', '.join(repr(p.name) for p in models)} are all pydantic"
            f" models; the data parses into one: a handler is {_SHAPES}."
        )
    model = models[0]
    others = [p for p in positional if p is not model and p.default is p.empty]
    if len(others) > 1 or any(hints.get(p.name, Event) not in (Event, Any) for p in others):
        raise ConfigurationError(
            f"{where}: besides its model parameter {model.name!r} the handler may take the"
            f" event, unannotated or annotated Event; a handler is {_SHAPES}."
        )
    schema = schema_from(hints[model.name], where)
    data_first = positional.index(model) == 0
    return _model_call(func, schema, with_event=bool(others), data_first=data_first), schema


def _model_call(
    func: Callable[..., Any], schema: Schema, *, with_event: bool, data_first: bool
) -> EventCall:
    def call(event: Event) -> Any:
        data = parsed(schema, event)
        if not with_event:
            return func(data)
        return func(data, event) if data_first else func(event, data)

    return call


def parsed(schema: Schema, event: Event) -> Any:
    """``event.data`` as ``schema``'s model; data the model refuses makes the delivery a dead
    letter ``schema_mismatch`` at once (no retry would make it parse)."""
    try:
        return schema.parse(event.data)
    except SchemaError as exc:
        raise DeliveryRefused(
            f"Event {event.id} refused: {event.name} data: {exc}", reason="schema_mismatch"
        ) from None


def _hints(
    func: Callable[..., Any], positional: list[inspect.Parameter], where: str
) -> dict[str, Any]:
    """The positional parameters' annotations, resolved (``from __future__ import
    annotations`` makes them strings)."""
    try:
        return typing.get_type_hints(func)
    except Exception:
        pass
    # One annotation cannot be resolved (an import under TYPE_CHECKING): resolve the others
    # one by one, and accept an unresolvable one only if it names the Event.
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    namespace = {**vars(module), "Event": Event} if module is not None else {"Event": Event}
    hints: dict[str, Any] = {}
    for parameter in positional:
        annotation = parameter.annotation
        if annotation is parameter.empty:
            continue
        if not isinstance(annotation, str):
            hints[parameter.name] = annotation
            continue
        try:
            hints[parameter.name] = eval(annotation, namespace)  # noqa: S307 - an annotation
        except Exception:
            if annotation.rsplit(".", 1)[-1] == "Event":
                hints[parameter.name] = Event
                continue
            raise ConfigurationError(
                f"{where}: the annotation {annotation!r} of parameter {parameter.name!r} cannot"
                " be resolved; import it at module level (not only under TYPE_CHECKING)."
            ) from None
    return hints


def _is_model(hint: Any) -> bool:
    if not isinstance(hint, type):
        return False
    try:
        from pydantic import BaseModel
    except ImportError:
        return False
    return issubclass(hint, BaseModel)
