"""The users service's worker: ``celery -A users.worker worker``.

It builds the Flask app, as the web process does, and exposes its Celery app; the handlers of
``users.events`` then run inside that Flask app's context.
"""

from __future__ import annotations

from .web import create_app

flask_app = create_app()
celery = flask_app.extensions["celery"]
