"""What the orders service stores."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    """An order; the demo only creates welcome orders, one per registered user."""

    user_id = models.BigIntegerField()
    kind = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)
    #: The event that made us create this order, and the chain it belongs to.
    cause_event_id = models.CharField(max_length=64)
    correlation_id = models.CharField(max_length=64)

    class Meta:
        constraints = [
            # One welcome order per user, however often user.registered is delivered.
            models.UniqueConstraint(fields=["user_id", "kind"], name="one_order_of_a_kind"),
        ]

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "user_id": self.user_id,
            "kind": self.kind,
            "created_at": self.created_at.isoformat(),
            "cause_event_id": self.cause_event_id,
            "correlation_id": self.correlation_id,
        }
