"""The error classes: every one is exported, and every one is a CeleryEventsError."""

from __future__ import annotations

import inspect

import celery_events
from celery_events import errors


def _error_classes() -> set[str]:
    return {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__
    }


def test_every_error_class_of_the_module_is_in_its_all_and_the_package() -> None:
    classes = _error_classes()
    assert classes <= set(errors.__all__)
    assert classes <= set(celery_events.__all__)


def test_every_error_is_a_celery_events_error() -> None:
    for name in _error_classes():
        assert issubclass(getattr(errors, name), errors.CeleryEventsError), name
