"""The scopes every well-configured service of the scopes tests shares (no app, no bus here:
tests import it)."""

#: payments alone may publish payments.# (protected); shop may publish order.*; ledger may
#: subscribe to refunds and orders only.
SCOPES: dict[str, object] = {
    "publish_scopes": {"payments": ["payments.#"], "shop": ["order.*"]},
    "subscribe_scopes": {"ledger": ["payments.refund.*", "order.#"]},
    "protected_names": ["payments.#"],
}
