"""The test settings with CELERY_EVENTS broken as ``CELERY_EVENTS_TEST_BROKEN`` says:

``missing`` (no setting), ``bad_value`` (a bus setting of the wrong type), ``bad_app`` (an
app path that does not import).
"""

import os

from .settings import *  # noqa: F403

_BROKEN = os.environ.get("CELERY_EVENTS_TEST_BROKEN", "missing")
if _BROKEN == "missing":
    del CELERY_EVENTS  # noqa: F821
elif _BROKEN == "bad_value":
    CELERY_EVENTS = {**CELERY_EVENTS, "publish_timeout": "soon"}  # noqa: F405
elif _BROKEN == "bad_app":
    CELERY_EVENTS = {**CELERY_EVENTS, "app": "tests.django.nowhere.app"}  # noqa: F405
