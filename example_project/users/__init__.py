"""The users service: a Flask app that registers users and publishes ``user.*`` events.

It never imports the other services: it knows them only by the events they publish.
"""
