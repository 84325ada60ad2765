"""The project's Celery app, configured from Django's settings as Celery's docs show.

(A real project also sets DJANGO_SETTINGS_MODULE here with os.environ.setdefault; the tests
pass it to worker processes instead, so that it never leaks into other tests' workers.)
"""

from celery import Celery

app = Celery("warehouse")
app.config_from_object("django.conf:settings", namespace="CELERY")
