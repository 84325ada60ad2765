"""`celery -A tests.flask.worker worker`: the Flask service's worker, made by its factory."""

from .shop import create_app

flask_app = create_app(SHOP_NAME="worker street")
app = flask_app.extensions["celery"]
