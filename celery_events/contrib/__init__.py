"""Integrations with web frameworks: ``contrib.django`` (a Django app) and ``contrib.flask``."""
