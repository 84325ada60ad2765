"""Names the worker benchmarks and their service module share."""

RAW_QUEUE = "bench.raw"
FIRST_KEY, LAST_KEY, READY_KEY = "bench:first", "bench:last", "bench:ready"
