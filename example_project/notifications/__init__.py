"""The notifications service: a plain Celery app that only listens.

It never imports the other services: it knows them only by the events they publish.
"""
