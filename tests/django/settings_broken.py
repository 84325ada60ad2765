"""The test settings plus an app whose subscribers module fails to import."""

from .settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.django.brokenapp"]  # noqa: F405
