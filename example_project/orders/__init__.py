"""The orders service: a Django project with one app, ``orders``, that listens and publishes.

It creates a welcome order for every new user and announces it with ``order.created``. It never
imports the other services: it knows them only by the events they publish.
"""
