"""The test project's package, laid out as `django-admin startproject` and Celery's docs do."""

from .celery import app as celery_app

__all__ = ["celery_app"]
