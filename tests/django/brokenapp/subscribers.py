"""A handler module with a bug: it imports a module that does not exist."""

import celery_events_no_such_module  # noqa: F401
