"""Names the worker benchmarks and their service module share."""

RAW_QUEUE = "bench.raw"
FIRST_KEY, LAST_KEY, READY_KEY = "bench:first", "bench:last", "bench:ready"
#: Where the worker that ran the first task imported celery_events from (a path).
SOURCE_KEY = "bench:celery_events_file"

#: The soak run (benchmarks/soak.py) and its services (benchmarks/soak_service.py).
SOAK_SERVICES = ("orders", "billing", "mail")
#: Its handlers (task names), as the tally counts them.
SOAK_HANDLERS = ("orders.reserve_stock", "billing.charge", "mail.send_invoice")
SOAK_RUNS_KEY = "soak:runs:{handler}"  # a bitfield of 2-bit counters, one per event
SOAK_COUNT_KEY = "soak:count:{handler}"  # runs in all, duplicates included
SOAK_READY_KEY = "soak:ready:{service}"
