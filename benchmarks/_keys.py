"""Names the worker benchmarks and their service module share."""

RAW_QUEUE = "bench.raw"
FIRST_KEY, LAST_KEY, READY_KEY = "bench:first", "bench:last", "bench:ready"
#: Where the worker that ran the first task imported celery_events from (a path).
SOURCE_KEY = "bench:celery_events_file"
