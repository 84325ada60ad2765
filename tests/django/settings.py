"""The test project's settings: a `warehouse` service with SQLite and PostgreSQL databases.

Tests configure Django with these in-process (tests/django/conftest.py); worker subprocesses
read them through DJANGO_SETTINGS_MODULE, with the environment naming the test databases.
"""

import os

SECRET_KEY = "celery-events-tests"
USE_TZ = True
DEBUG = False
ROOT_URLCONF = "tests.django.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "celery_events.contrib.django",
    "tests.django.warehouse",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
_PG = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": "127.0.0.1",
    "PORT": os.environ.get("CELERY_EVENTS_TEST_PG_PORT", "5432"),
    "USER": "postgres",
    "NAME": os.environ.get("CELERY_EVENTS_TEST_PG_NAME", "celery_events"),
    "TEST": {"NAME": "test_celery_events"},
}
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    "pg": _PG,
}
# The warehouse's models live where CELERY_EVENTS["database"] says.
DATABASE_ROUTERS = ["tests.django.warehouse.routers.FollowCeleryEvents"]

CELERY_BROKER_URL = os.environ.get("CELERY_EVENTS_TEST_BROKER", "redis://127.0.0.1:6379/0")
CELERY_EVENTS = {
    "service": "warehouse",
    "app": "tests.django.proj.celery.app",
    "database": os.environ.get("CELERY_EVENTS_TEST_DATABASE", "default"),
    "outbox": os.environ.get("CELERY_EVENTS_TEST_OUTBOX") == "1",
    "relay_in_worker": os.environ.get("CELERY_EVENTS_TEST_RELAY_IN_WORKER") == "1",
    "relay_interval": 0.1,
    "publish_timeout": 1.0,
    # The state store in the database (test_state_worker.py), with a short poison limit.
    **(
        {"state": "database", "max_deliveries": 2}
        if os.environ.get("CELERY_EVENTS_TEST_STATE") == "database"
        else {}
    ),
    # A fleet without Redis (test_rabbitmq_database.py): RabbitMQ routes and keeps the
    # registry, the database keeps the state; no registry_url, no state_url.
    **(
        {"state": "database", "management_url": os.environ["CELERY_EVENTS_TEST_MANAGEMENT"]}
        if os.environ.get("CELERY_EVENTS_TEST_NO_REDIS") == "1"
        else {}
    ),
}
