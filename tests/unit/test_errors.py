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


def test_errors_survive_pickling_with_their_attributes() -> None:
    # Celery pickles a run's exception (the prefork pool hands it to the worker's main process)
    import pickle

    from celery_events import Retry

    cases = [
        errors.NotReplicatedError("1 of 2 replicas acknowledged", acknowledged=1, wanted=2),
        errors.SchemaError("total must be a number", path="$.total", rule="type"),
        errors.DeliveryRefused("unsigned", reason="unsigned"),
        errors.PublishError("broker down"),
        Retry(2.5, "the ledger is closing"),
    ]
    for error in cases:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.args == error.args
        assert vars(copy) == vars(error), type(error).__name__
