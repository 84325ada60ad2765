from django.db import models


class Shipment(models.Model):
    """One per handled `order.placed`; no unique key, so a repeated effect would show."""

    order_id = models.IntegerField()
    event_id = models.CharField(max_length=64)


class Order(models.Model):
    """What a view of the warehouse writes before it publishes."""

    reference = models.CharField(max_length=32)
